"""Example projects: data, models, every YAML config (fast_dev_run), the DDP config, the compare demo."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "example_projects").glob("*/configs/*.yaml"))
SINGLE_PROCESS = [c for c in CONFIGS if c.name != "ddp.yaml"]


@pytest.fixture
def data_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-session data cache (MNIST-1D is generated once), exported as LIGHTNING_REG_DATA."""
    root = tmp_path_factory.getbasetemp() / "lightning_reg_data"
    monkeypatch.setenv("LIGHTNING_REG_DATA", str(root))
    return root


# ---------------------------------------------------------------- data


def test_mnist1d_generated_locally_cached_and_rng_untouched(data_root: Path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    from example_projects.mnist1d import data as mdata

    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    d = mdata.load_mnist1d()
    assert (data_root / "mnist1d" / "mnist1d_seed42.npz").is_file()
    # the caller's global generators are as they were (make_dataset reseeds them)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    ref = make_dataset(get_dataset_args())  # the reference generator, called directly
    for k in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(d[k], ref[k]), k
    assert d["x"].shape == (4000, 40) and d["x_test"].shape == (1000, 40)

    def boom(seed):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mdata, "_generate", boom)
    again = mdata.load_mnist1d()
    assert np.array_equal(again["x"], d["x"])


def test_mnist1d_datamodule_splits(data_root: Path):
    from example_projects.mnist1d import MNIST1DDataModule, load_mnist1d

    dm = MNIST1DDataModule(train_size=300, val_size=200, batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 300 and len(dm.val_set) == 200 and len(dm.test_set) == 1000
    raw = load_mnist1d()
    rows = {tuple(r) for r in raw["x"].astype(np.float32).tolist()}
    train = {tuple(r) for r in dm.train_set.tensors[0].tolist()}
    val = {tuple(r) for r in dm.val_set.tensors[0].tolist()}
    assert train <= rows and val <= rows and not train & val
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 40) and x.dtype == torch.float32 and y.dtype == torch.long
    seq = MNIST1DDataModule(train_size=300, val_size=200, batch_size=50, channel_dim=True)
    seq.setup("fit")
    assert torch.equal(seq.train_set.tensors[0], dm.train_set.tensors[0].unsqueeze(1))
    assert seq.test_set.tensors[0].shape == (1000, 1, 40)
    with pytest.raises(ValueError, match="train_size=3500, val_size=1000"):
        MNIST1DDataModule(train_size=3500, val_size=1000)


def test_digits_datamodule_splits_normalisation_and_augmentation():
    from sklearn.datasets import load_digits

    from example_projects.digits import DigitsDataModule

    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    sets = (dm.train_set, dm.val_set, dm.test_set)
    assert [len(s) for s in sets] == [1797 - 720, 360, 360]
    images = torch.cat([s.images for s in sets])
    assert images.shape == (1797, 1, 8, 8)
    assert abs(images.mean().item()) < 1e-3 and abs(images.std().item() - 1) < 1e-3
    ref = torch.as_tensor(load_digits().data, dtype=torch.float32)
    restored = (images.view(1797, 64) * 0.3760 + 0.3053) * 16
    assert sorted(map(tuple, restored.round().tolist())) == sorted(map(tuple, ref.tolist()))
    assert dm.train_set.transform is not None
    assert dm.val_set.transform is None and dm.test_set.transform is None
    torch.manual_seed(0)
    x0, _ = dm.train_set[0]
    assert x0.shape == (1, 8, 8) and not torch.equal(x0, dm.train_set.images[0])  # augmented
    assert torch.equal(dm.val_set[0][0], dm.val_set.images[0])
    small = DigitsDataModule(train_size=100, augment=False)
    small.setup("fit")
    assert len(small.train_set) == 100 and small.train_set.transform is None
    with pytest.raises(ValueError, match="train_size=2000"):
        DigitsDataModule(train_size=2000)


def test_tabular_datamodule_splits_and_standardises_with_training_rows_only():
    from sklearn.datasets import load_breast_cancer

    from example_projects.tabular import TabularDataModule

    dm = TabularDataModule(train_size=100, val_size=150, test_size=169)
    dm.setup("fit")
    xs = [t.tensors[0] for t in (dm.train_set, dm.val_set, dm.test_set)]
    assert [len(x) for x in xs] == [100, 150, 169] and dm.num_classes == 2 and dm.num_features == 30
    train = xs[0]
    assert torch.allclose(train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(train.std(0), torch.ones(30), atol=1e-4)
    # every row is a bundled row, standardised with the training rows' statistics (recomputed here)
    raw = torch.as_tensor(load_breast_cancer().data, dtype=torch.float32)
    perm = torch.randperm(569, generator=torch.Generator().manual_seed(0))
    train_raw = raw[perm[319:419]]
    mean, std = train_raw.mean(0), train_raw.std(0)
    assert torch.allclose(xs[1] * std + mean, raw[perm[169:319]], rtol=1e-4, atol=1e-3)
    assert torch.allclose(xs[2] * std + mean, raw[perm[:169]], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="train_size=300"):
        TabularDataModule(train_size=300)


# ---------------------------------------------------------------- models


def test_narrow_torchvision_resnet_keeps_the_layout():
    from torchvision.models.resnet import BasicBlock, ResNet

    from example_projects.digits import resnet_for_8x8

    model = resnet_for_8x8(width=16)
    assert isinstance(model, ResNet)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.conv2.out_channels for b in blocks] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert model.fc.in_features == 128 and model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_resnet_for_8x8_keeps_resolution_through_the_stem():
    from example_projects.digits import resnet_for_8x8

    model = resnet_for_8x8()
    sizes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[-2:]))
    out = model(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10)
    assert {k: tuple(v) for k, v in sizes.items()} == {
        "layer1": (8, 8),
        "layer2": (4, 4),
        "layer3": (2, 2),
        "layer4": (1, 1),
    }


def test_mnist1d_models_shapes():
    from example_projects.mnist1d import MLP, ResNet1d

    x = torch.randn(3, 40)
    net = ResNet1d(widths=(8, 16, 32), blocks_per_stage=2).eval()
    assert net(x).shape == (3, 10) and torch.equal(net(x), net(x.unsqueeze(1)))
    mlp = MLP(hidden=32, depth=2, dropout=0.5)
    assert mlp(x).shape == (3, 10)
    assert sum(isinstance(m, torch.nn.Dropout) for m in mlp) == 2


# ---------------------------------------------------------------- configs through the CLI


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("config", SINGLE_PROCESS, ids=lambda p: f"{p.parents[1].name}/{p.stem}")
def test_every_config_runs_fast_dev_run(config: Path, data_root: Path, tmp_path: Path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    project = config.parents[1].name
    entry = importlib.import_module(f"example_projects.{project}.__main__")
    cli = entry.main(
        ["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["val_loss"].isfinite()
    import lightning_reg

    ours = sorted(
        type(cb).__name__ for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lightning_reg")
    )
    drop_paths = [m for m in cli.model.modules() if isinstance(m, lightning_reg.DropPath)]
    groups = {g["name"]: g["weight_decay"] for g in cli.trainer.optimizers[0].param_groups}
    if "callbacks:" not in config.read_text():  # baseline / demo: no regularization at all
        assert ours == [] and drop_paths == [] and set(groups.values()) == {0.0}
    else:  # regularized / ddp: every piece of the library on
        assert ours == [
            "EarlyStopping",
            "GradientClipping",
            "GradientMonitor",
            "OverfittingMonitor",
            "StochasticDepthScheduler",
        ]
        es = next(cb for cb in cli.trainer.callbacks if isinstance(cb, lightning_reg.EarlyStopping))
        assert es.restore_best_weights
        assert len(drop_paths) == sum(
            1 for m in cli.model.modules() if type(m).__name__.startswith("BasicBlock")
        )
        assert groups["decay"] > 0 and groups["no_decay"] == 0.0


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
class DropPathRates(L.Callback):
    """Records the DropPath rates of the model while it trains (a preset's are back at 0 after the fit)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import lightning_reg

        self.seen = [m.p for m in pl_module.modules() if isinstance(m, lightning_reg.DropPath)]


@pytest.mark.parametrize(
    ("project", "fragment", "preset"),
    [
        ("mnist1d", "mnist1d/configs/presets/strong.yaml", "strong"),
        ("digits", "presets/medium.yaml", "medium"),
        ("tabular", "presets/strong.yaml", "strong"),
    ],
)
def test_preset_fragment_on_a_baseline_config(
    project, fragment, preset, data_root, tmp_path, monkeypatch, caplog
):
    """`--config baseline.yaml --config <preset>.yaml` as a user writes it: every component of the preset."""
    import importlib
    import logging

    import lightning_reg

    monkeypatch.chdir(tmp_path)
    entry = importlib.import_module(f"example_projects.{project}.__main__")
    args = [
        "fit",
        "--config",
        str(REPO / "example_projects" / project / "configs" / "baseline.yaml"),
        "--config",
        str(REPO / "example_projects" / fragment),
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=tests.test_examples.DropPathRates",  # after the fragment's list
    ]
    if project == "mnist1d":
        args.append("--data.channel_dim=true")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        cli = entry.main(args)
    p = lightning_reg.presets.registry.PRESETS[preset]
    assert cli.trainer.state.finished and cli.model.preset == p
    ours = [
        type(cb).__name__ for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lightning_reg")
    ]
    assert ours == [
        "PresetSummary",
        "PresetEarlyStopping",
        "OverfittingMonitor",
        "GradientClipping",
        "PresetStochasticDepth",
    ]
    groups = {g["name"]: g["weight_decay"] for g in cli.trainer.optimizers[0].param_groups}
    assert groups == {"decay": p.weight_decay, "no_decay": 0.0}  # the fragment's null beat the baseline's 0.0
    mixer = cli.model.batch_mixer
    assert mixer.label_smoothing == p.label_smoothing and mixer.num_classes == (
        2 if project == "tabular" else 10
    )
    drop_paths = [m for m in cli.model.modules() if isinstance(m, lightning_reg.DropPath)]
    blocks = [m for m in cli.model.modules() if type(m).__name__.startswith("BasicBlock")]
    (rates,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, DropPathRates)]
    assert len(drop_paths) == len(blocks) and max(rates.seen, default=0.0) == pytest.approx(
        p.drop_path_rate if blocks else 0.0
    )
    assert all(d.p == 0.0 for d in drop_paths)  # inserted for the fit, back to rate 0 after it
    notes = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    if project == "tabular":  # an MLP on (B, 30) rows: no residual block, no spatial dimension
        cutmix = ["CutMix"] if p.cutmix_prob > 0 else []
        assert mixer.skipped == cutmix and len(notes) == len(cutmix)
        # no residual block: its dropout modules (built at rate 0 too) take the preset's stand-in rate
        said = [r.getMessage() for r in caplog.records]
        assert any(
            m.startswith(f"preset '{preset}': no residual block found in TabularMLP, so its 3 dropout")
            and f"at rate {p.dropout_rate:g}" in m
            for m in said
        ), said
    else:
        assert mixer.skipped == [] and notes == []


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_compare_tiny(data_root: Path, tmp_path: Path, capsys):
    from example_projects import compare
    from example_projects.stats import paired_diff

    results = compare.main(["--tiny", "--jobs", "1", "--out", str(tmp_path)])
    assert [r.config for r in results] == ["baseline", "mild", "medium", "strong"]
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) <= 60
    acc = {r.config: r.test_acc for r in results}
    for r in results:
        assert 0.0 <= r.test_acc <= 1.0 and 0.0 <= r.train_acc <= 1.0
        assert r.epochs_run == 2
        assert f"| {r.config} | {100 * r.test_acc:.1f}% |" in printed
        if r.config != "baseline":  # the paired difference, computed here from the runs
            assert paired_diff([acc[r.config]], [acc["baseline"]]).pp() in printed
    assert f"seed 0: test acc  baseline {100 * acc['baseline']:.1f}%" in printed
    base, presets = results[0], results[1:]
    assert base.best_epoch is None  # no early stopping in the baseline: its final weights are tested
    for reg in presets:  # each preset restored the epoch with the highest logged val_acc (first on ties)
        val = {}
        with open(Path(reg.log_dir) / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("val_acc"):
                    val[int(row["epoch"])] = float(row["val_acc"])
        assert reg.best_epoch == max(sorted(val), key=lambda e: val[e])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [run["test_acc"] for run in summary["runs"]] == [r.test_acc for r in results]
    for name in ("compare.png", "alert.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "summary.md").read_text().startswith("| config |")
    # the published table (docs, README) has the columns the demo writes now: a change of the demo's table
    # must be republished (`--publish`), and .ci/check_demo.sh then compares the numbers of a full run
    from example_projects.check_demo import PUBLISHED, differences, parse_table

    summary = (tmp_path / "summary.md").read_text()
    assert parse_table(summary)[0] == parse_table(PUBLISHED.read_text())[0]
    assert differences(summary, summary + "\nReproduce: `x`.\n", "") == [
        "README.md: no table between <!-- demo-table --> and <!-- /demo-table -->"
    ]


def test_paired_t_interval_matches_scipy():
    from scipy import stats

    from example_projects.stats import paired_diff, t_quantile_975

    a, b = [0.91, 0.93, 0.90, 0.95, 0.92], [0.90, 0.90, 0.91, 0.92, 0.90]
    d = paired_diff(a, b)
    diffs = np.subtract(a, b)
    lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert d.mean == pytest.approx(diffs.mean())
    assert d.low == pytest.approx(lo, abs=1e-5) and d.high == pytest.approx(hi, abs=1e-5)  # 4-digit table
    for df in (1, 2, 7, 30, 40, 60, 120):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)
    assert t_quantile_975(45) >= stats.t.ppf(0.975, 45)  # conservative between table rows
    assert paired_diff([1.0, 1.2, 1.1], [0.0, 0.1, 0.0]).excludes_zero
    assert not paired_diff([0.1, -0.2, 0.05], [0.0, 0.0, 0.0]).excludes_zero


class RankDump(L.Callback):
    """Test helper appended to the DDP config from the command line: each rank saves what it ended with."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.callbacks import EarlyStopping

        best = [getattr(cb, "best_epoch", None) for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
        torch.save(
            {
                "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "best_epoch": best,
                "callbacks": sorted(type(cb).__name__ for cb in trainer.callbacks),
            },
            Path(os.environ["RANK_DUMP_DIR"]) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_config_two_cpu_processes(data_root: Path, tmp_path: Path):
    """`ddp.yaml` as a user runs it (Lightning's launcher re-executes `python -m ...` for rank 1)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RANK_DUMP_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "example_projects.mnist1d",
        "fit",
        "--config",
        str(REPO / "example_projects/mnist1d/configs/ddp.yaml"),
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=2",
        "--data.train_size=256",
        "--data.val_size=128",
        "--model.init_args.widths=[8, 16]",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=tests.test_examples.RankDump",
    ]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"DDP example timed out (hung collective?)\n{err.stdout}\n{err.stderr}") from err
    assert proc.returncode == 0, proc.stderr[-6000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # 256 samples split over 2 ranks, batch 64: 2 steps per epoch, 2 epochs
    assert r0["global_step"] == r1["global_step"] == 4
    assert r0["best_epoch"] == r1["best_epoch"]
    assert r0["callbacks"] == r1["callbacks"]
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    csvs = list((tmp_path / "lightning_logs" / "mnist1d" / "ddp").rglob("metrics.csv"))
    assert len(csvs) == 1 and "val_loss" in csvs[0].read_text().splitlines()[0]
