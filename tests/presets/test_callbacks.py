"""The Trainer side of presets and ``RegularizedModule(preset=...)``: real fits on tiny models."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock

import lightning_reg
from lightning_reg import (
    EarlyStopping,
    GradientClipping,
    OverfittingMonitor,
    RegularizedModule,
    get_preset,
    preset_callbacks,
)
from lightning_reg.presets import PresetEarlyStopping, PresetSummary, preset_config
from lightning_reg.presets.callbacks import PresetStochasticDepth
from lightning_reg.presets.registry import PRESETS
from tests.helpers import fast_trainer

REPO = Path(__file__).resolve().parents[2]
NOTE_LOGGER = "lightning.pytorch.utilities.rank_zero"


def _trainer(callbacks, epochs=2):
    return fast_trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks)


class Net(RegularizedModule):
    """A classifier that records the targets its training steps receive."""

    def __init__(self, body: nn.Module, num_classes: int = 3, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.body = body
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(y.detach().clone())
        loss = self.mixing_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def _loader(x, y, shuffle=False):
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle)


def test_callbacks_follow_the_preset_and_overrides():
    names = [[type(cb).__name__ for cb in preset_callbacks(n)] for n in ("mild", "medium", "strong")]
    full = [
        "PresetSummary",
        "PresetEarlyStopping",
        "OverfittingMonitor",
        "GradientClipping",
        "PresetStochasticDepth",
    ]
    for n, got in zip(("mild", "medium", "strong"), names):
        sd = PRESETS[n].drop_path_rate > 0 or PRESETS[n].dropout_rate > 0
        want = [c for c in full if c != "PresetStochasticDepth" or sd]
        assert got == [c for c in want if c != "GradientClipping" or PRESETS[n].clipping], n
    cbs = preset_callbacks(
        "strong",
        monitor="val_acc",
        mode="max",
        patience=7,
        clipping=None,
        drop_path_rate=0.0,
        dropout_rate=0.0,
    )
    assert [type(cb) for cb in cbs] == [PresetSummary, PresetEarlyStopping, OverfittingMonitor]
    es, mon = cbs[1], cbs[2]
    assert (es.monitor, es.mode, es.patience, es.restore_best_weights) == ("val_acc", "max", 7, True)
    assert (
        mon.pairs == {"acc": ("train_acc", "val_acc", "max")}
        and mon.probe == PRESETS["strong"].overfitting_probe
    )
    assert mon.warmup == PRESETS["strong"].overfitting_warmup
    clip = next(
        cb
        for cb in preset_callbacks("strong", clipping="norm", clip_max_norm=2.0)
        if isinstance(cb, GradientClipping)
    )
    assert clip.algorithm == "norm" and clip.rule.max_norm == 2.0
    with pytest.raises(ValueError, match="pass pairs="):
        preset_callbacks("mild", monitor="loss", mode="min")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        preset_callbacks("mild", mode="up")
    # an accuracy monitored without a mode would be minimised (Lightning's default): refused, not guessed
    with pytest.raises(ValueError, match=r"`mode` is required with monitor='val_acc'"):
        preset_callbacks("mild", monitor="val_acc")
    with pytest.raises(ValueError, match=r"`mode` is required with monitor='val_acc'"):
        preset_config("mild", monitor="val_acc")
    es = next(
        cb for cb in preset_callbacks("mild", monitor="val_acc", mode="max") if isinstance(cb, EarlyStopping)
    )
    assert (es.monitor, es.mode) == ("val_acc", "max")


def test_drop_path_rate_none_switches_drop_path_off_as_clipping_none_switches_clipping_off():
    names = [
        type(cb).__name__
        for cb in preset_callbacks("strong", drop_path_rate=None, dropout_rate=0.0, clipping=None)
    ]
    assert names == ["PresetSummary", "PresetEarlyStopping", "OverfittingMonitor"]
    assert get_preset("strong", drop_path_rate=None).drop_path_rate == 0.0
    assert "PresetStochasticDepth" not in preset_config("strong", drop_path_rate=None, dropout_rate=0.0)


def test_strong_preset_on_an_mlp_skips_what_does_not_apply(caplog):
    """Tabular inputs and no residual block: CutMix and drop-path are skipped with one note each."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    p = get_preset("strong", mixup_prob=0.6, cutmix_prob=0.3)  # a CutMix part to skip
    model = Net(nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)), preset=p)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        trainer = _trainer(preset_callbacks(p))
        trainer.fit(model, _loader(x, y, True), _loader(x, y))
    messages = [r.getMessage() for r in caplog.records]
    skipped = [m for m in messages if "skipped" in m]
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith(
        "preset 'strong': drop-path and its dropout stand-in skipped (no residual block and no dropout module"
        " in Net"
    )
    assert skipped[1].startswith("preset 'strong': CutMix skipped (inputs of shape (16, 6)")
    assert any(m.startswith(f"preset 'strong': weight decay {p.weight_decay:g}") for m in messages)  # summary
    assert not any(isinstance(m, lightning_reg.DropPath) for m in model.modules())
    groups = {g["name"]: g["weight_decay"] for g in trainer.optimizers[0].param_groups}
    assert groups == {"decay": p.weight_decay, "no_decay": 0.0}  # LayerNorm and biases not decayed
    # every training target is a smoothed probability vector; mixed ones are not one-hot-like
    eps, k = p.label_smoothing, 3
    seen = torch.cat(model.seen)
    assert seen.shape == (64 * 2, 3) and torch.allclose(seen.sum(1), torch.ones(len(seen)))
    assert float(seen.min()) >= eps / k - 1e-6 and float(seen.max()) <= 1 - eps + eps / k + 1e-6
    assert model.batch_mixer.skipped == ["CutMix"] and model.batch_mixer.prob == p.mixup_prob


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_drop_path_inserted_into_torchvision_blocks_and_restored_weights(caplog):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    model = Net(TwoBlocks(), preset=get_preset("medium", drop_path_rate=0.3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    es, sd = None, None
    cbs = preset_callbacks(get_preset("medium", drop_path_rate=0.3), patience=50)
    for cb in cbs:
        es = cb if isinstance(cb, EarlyStopping) else es
        sd = cb if isinstance(cb, PresetStochasticDepth) else sd

    class Rates(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen = [round(m.p, 6) for m in pl_module.modules() if isinstance(m, lightning_reg.DropPath)]

    rates = Rates()
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        _trainer([*cbs, rates], epochs=3).fit(model, _loader(x, y, True), _loader(x, y))
    drops = [m for m in model.modules() if isinstance(m, lightning_reg.DropPath)]
    # while training: timm's linear depth rule over the two blocks, linspace(0, 0.3, 2)
    assert rates.seen == [0.0, 0.3]
    assert [d.p for d in drops] == [0.0, 0.0]  # after the fit: back to rate 0, as the model was built
    assert not sd.skipped and model.state_dict().keys() == before.keys()  # keys unchanged by the surgery
    assert es.best_epoch is not None  # restore ran (patience never fired: 3 epochs)
    assert not any("skipped" in r.getMessage() for r in caplog.records)


def test_module_side_notes_and_precedence(caplog):
    body = nn.Sequential(nn.Linear(4, 3))
    plain = L.LightningModule()
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        PresetSummary("mild").on_fit_start(None, plain)  # type: ignore[arg-type]
        PresetSummary("strong").on_fit_start(None, Net(body, preset="mild"))  # type: ignore[arg-type]
        PresetSummary("mild", verbose=0).on_fit_start(None, plain)  # type: ignore[arg-type]
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("carries no preset" in m for m in msgs) == 1
    assert sum("the module's preset is 'mild'" in m for m in msgs) == 1
    explicit = Net(body, preset="strong", weight_decay=0.0, optimizer=torch.optim.SGD)
    opt = explicit.configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    sgd = Net(body, preset="mild", optimizer=torch.optim.SGD)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        opt = sgd.configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    assert any("weight decay skipped" in r.getMessage() for r in caplog.records)
    adamw = Net(body, preset="mild").configure_optimizers()["optimizer"]
    assert [g["weight_decay"] for g in adamw.param_groups] == [PRESETS["mild"].weight_decay, 0.0]


@pytest.mark.parametrize("name", ["mild", "medium", "strong"])
def test_config_fragment_matches_the_python_callbacks(name):
    # the example projects are classifiers: their fragments follow the validation accuracy
    text = preset_config(name, num_classes=10, branch_ends={"BasicBlock1d": "bn2"})
    cfg = yaml.safe_load(text)
    assert cfg["model"]["init_args"] == {"preset": name, "weight_decay": None}
    py = preset_callbacks(name, num_classes=10, branch_ends={"BasicBlock1d": "bn2"})
    paths = [c["class_path"].rsplit(".", 1) for c in cfg["trainer"]["callbacks"]]
    # each class path names the public name of exactly the class the Python call builds
    assert [getattr(importlib.import_module(m), n) for m, n in paths] == [type(c) for c in py]
    assert all(n in importlib.import_module(m).__all__ for m, n in paths)
    renamed = {"warmup": "cutoff"}  # PresetStochasticDepth(warmup=...) is the scheduler's cutoff fraction
    es = next(c for c in py if isinstance(c, PresetEarlyStopping))
    assert (es.monitor, es.mode, es.patience_fraction) == ("val_acc", "max", PRESETS[name].patience)
    for entry, cb in zip(cfg["trainer"]["callbacks"], py):  # every init arg equals the callback's attribute
        for key, value in entry.get("init_args", {}).items():
            attr = renamed.get(key, key) if isinstance(cb, PresetStochasticDepth) else key
            have = getattr(cb, attr)
            if key == "preset":
                have = cb.preset.name
            elif key == "pairs":
                have = {k: list(v) for k, v in cb.pairs.items()}
            elif isinstance(value, bool):
                have = bool(have)
            assert have == value, (type(cb).__name__, key)
    with pytest.raises(ValueError, match="module side"):
        preset_config(name, weight_decay=0.0)
    # the committed fragments are exactly what the function writes
    fragment = preset_config(name, num_classes=10)
    assert (REPO / "example_projects" / "presets" / f"{name}.yaml").read_text() == fragment
    committed = REPO / "example_projects" / "mnist1d" / "configs" / "presets" / f"{name}.yaml"
    assert committed.read_text() == text


class _RatesSeen(L.Callback):
    """Records every drop-path module's rate at the first training batch."""

    def __init__(self):
        self.rates: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.rates:
            modules = pl_module.named_modules()
            self.rates = {n: float(m.drop_prob) for n, m in modules if hasattr(m, "drop_prob")}


def _timm_resnet(drop_path_rate):
    timm_resnet = pytest.importorskip("timm.models.resnet")
    block, layers, channels = timm_resnet.BasicBlock, [1, 1, 1, 1], (4, 8, 8, 8)
    sizes = {"num_classes": 3, "in_chans": 1}
    return timm_resnet.ResNet(block, layers, channels=channels, drop_path_rate=drop_path_rate, **sizes)


def test_timm_model_gets_the_preset_rates_or_a_note_naming_drop_path_rate(caplog):
    """timm builds DropPath modules only for a rate > 0: then the preset sets them, else it says how."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    seen = _RatesSeen()
    model = Net(_timm_resnet(0.05), preset="strong")
    _trainer([*preset_callbacks("strong"), seen], epochs=1).fit(model, _loader(x, y, True), _loader(x, y))
    # timm built modules for blocks 2-4 only (block 1's linear rate is 0, no module); during the fit they
    # hold timm's own linear rule over the 4 blocks up to the preset's rate: linspace(0, rate, 4)[1:]
    expected = torch.linspace(0, PRESETS["strong"].drop_path_rate, 4)[1:].tolist()
    assert list(seen.rates) == [f"body.layer{i}.0.drop_path" for i in (2, 3, 4)]
    assert list(seen.rates.values()) == pytest.approx(expected, rel=1e-6)
    built = torch.linspace(0, 0.05, 4)[1:].tolist()  # the rates timm built, back after the fit
    assert [m.drop_prob for n, m in model.named_modules() if n.endswith("drop_path")] == pytest.approx(built)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        plain = Net(_timm_resnet(0.0), preset="strong")
        _trainer(preset_callbacks("strong"), epochs=1).fit(plain, _loader(x, y, True), _loader(x, y))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "timm models need drop_path_rate > 0" in skipped[0], skipped
    # timm's ResNet at rate 0 has no dropout module either: no stand-in, and the note names both
    assert "drop-path and its dropout stand-in skipped" in skipped[0]


class CliNet(RegularizedModule):
    """A classifier LightningCLI can build: preset, weight decay and optimizer from the config."""

    def __init__(self, preset: str | None = None, weight_decay: float | None = None, **kwargs):
        super().__init__(preset=preset, weight_decay=weight_decay, num_classes=3, **kwargs)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.mixing_loss(self.body(x), y)

    def train_dataloader(self):
        return _loader(torch.randn(16, 4), torch.randint(0, 3, (16,)))


def test_preset_with_sgd_says_one_consistent_thing(monkeypatch, caplog):
    """A preset's weight decay is decoupled; with SGD it is skipped. The messages must agree with that: the
    carried-over warning names the preset's value, and the summary says the weight decay is skipped."""
    from functools import partial

    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])
    args = [
        "--trainer.logger=false",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        "--model.preset=medium",
        '--model.optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}',
        "--model.lr=null",
    ]
    medium_wd, mild_wd = (re.escape(f"{PRESETS[n].weight_decay:g}") for n in ("medium", "mild"))
    with pytest.warns(
        UserWarning, match=rf"SGD has weight_decay=0\.01.*the preset 'medium''s weight_decay={medium_wd}"
    ):
        cli = LightningCLI(CliNet, run=False, args=args, save_config_callback=None)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        cli.trainer.callbacks.append(PresetSummary("medium"))
        cli.trainer.fit(cli.model)
    assert {g["weight_decay"] for g in cli.trainer.optimizers[0].param_groups} == {0.0}
    msgs = [r.getMessage() for r in caplog.records]
    assert any("weight decay skipped" in m and "SGD adds weight decay to the gradient" in m for m in msgs)
    line = f"preset 'medium': weight decay {PRESETS['medium'].weight_decay:g}"
    summary = [m for m in msgs if m.startswith(line)]
    assert len(summary) == 1 and summary[0].endswith(
        "its weight decay is skipped (SGD has no decoupled weight decay)"
    )
    # a weight decay the user did write into the optimizer conflicts with the preset's: the error says so
    with pytest.raises(
        ValueError,
        match=rf"SGD\(weight_decay=0\.0001\).*the preset 'mild''s weight_decay={mild_wd}.*"
        r"overrides the preset's",
    ):
        CliNet(preset="mild", optimizer=partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4), lr=None)


def test_preset_callbacks_follow_verbose(caplog):
    """verbose=1: one line per callback at fit start (the restore is said at the end); verbose=0: nothing."""
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for verbose in (1, 0):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
            model = Net(
                nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)), preset="mild", verbose=0
            )
            _trainer(preset_callbacks("mild", verbose=verbose), epochs=2).fit(
                model, _loader(x, y), _loader(x, y)
            )
        ours = [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().split(":")[0] in ("EarlyStopping", "OverfittingMonitor", "GradientClipping")
        ]
        if verbose:
            # the presets' early stopping says its line when training starts, with the patience resolved
            assert [m.split(":")[0] for m in ours if "restored" not in m and "alert" not in m] == [
                "OverfittingMonitor",
                "GradientClipping",
                "EarlyStopping",
            ]
            assert any(m.startswith("EarlyStopping: restored epoch") for m in ours)
        else:
            assert ours == []


def test_the_fragment_for_a_fixed_model_class_loads_into_lightning_cli(tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from lightning_reg.presets import preset_config
    from lightning_reg.presets.__main__ import main

    monkeypatch.setattr("sys.argv", ["cli"])
    base = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1"]
    fixed, subclass = tmp_path / "fixed.yaml", tmp_path / "subclass.yaml"
    fixed.write_text(preset_config("medium", num_classes=3, fixed_model=True))
    subclass.write_text(preset_config("medium", num_classes=3))
    cli = LightningCLI(CliNet, run=False, args=[*base, "--config", str(fixed)], save_config_callback=None)
    assert cli.model.preset.name == "medium"
    optimizer = cli.model.configure_optimizers()["optimizer"]  # weight_decay: null -> the preset's
    assert {g["weight_decay"] for g in optimizer.param_groups} == {PRESETS["medium"].weight_decay, 0.0}
    assert [type(cb).__name__ for cb in cli.trainer.callbacks if "Preset" in type(cb).__name__] == [
        "PresetSummary",
        "PresetEarlyStopping",
        "PresetStochasticDepth",
    ]
    # the default fragment (model.init_args) is for a subclass-mode CLI; a fixed class refuses it
    with pytest.raises(SystemExit):
        LightningCLI(CliNet, run=False, args=[*base, "--config", str(subclass)], save_config_callback=None)
    sub = LightningCLI(
        CliNet,
        subclass_mode_model=True,
        run=False,
        args=[*base, "--model.class_path", f"{__name__}.CliNet", "--config", str(subclass)],
        save_config_callback=None,
    )
    assert sub.model.preset.name == "medium"
    # the command line writes the same text
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["medium", "--num-classes", "3", "--fixed-model"])
    assert out.getvalue() == fixed.read_text()
