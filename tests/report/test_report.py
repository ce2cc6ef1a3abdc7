"""lightning_reg.report: hand-worked series, a real short run (CSV and TensorBoard), errors, the CLI."""

from __future__ import annotations

import ast
import csv
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_reg.report import MissingMetricsError, load_metrics, render_report
from lightning_reg.report.cli import main
from lightning_reg.report.data import ReportKeys, best_epoch_of
from lightning_reg.report.plots import plot_drop_path, plot_grad_norms, plot_train_val

REPO = Path(__file__).resolve().parents[2]


def assert_png(path: Path, min_bytes: int = 8_000) -> tuple[int, int]:
    """A real PNG: signature, IHDR chunk first, a plausible size, non-trivial content."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200, (width, height)
    assert len(data) >= min_bytes, f"{path}: only {len(data)} bytes"
    assert data[-8:-4] == b"IEND"
    return width, height


def csv_columns(path: Path) -> dict[str, list[tuple[int | None, int, float]]]:
    """Independent parse of a CSVLogger file: key -> [(epoch or None, step, value)] for non-empty cells.

    Metrics written straight to the loggers (gradient norms, drop-path rate) have no epoch."""
    out: dict[str, list[tuple[int | None, int, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = int(row["epoch"]) if row["epoch"] else None
            for key, cell in row.items():
                if key not in ("epoch", "step") and cell:
                    out.setdefault(key, []).append((epoch, int(row["step"]), float(cell)))
    return out


# ---------------------------------------------------------------- hand-worked CSV

HAND_CSV = """epoch,step,train_loss,val_loss,overfit/alert,grad/clip/norm_pre,grad/clip/norm_post
0,4,,,,8.0,1.0
0,9,,2.0,,,
0,9,1.5,,0,,
1,14,,,,4.0,1.0
1,19,,1.0,,,
1,19,0.8,,0,,
2,24,,,,0.5,0.5
2,29,,1.2,,,
2,29,0.4,,1,,
3,39,,1.5,,,
3,39,0.2,,1,,
"""


@pytest.fixture
def hand_dir(tmp_path: Path) -> Path:
    (tmp_path / "metrics.csv").write_text(HAND_CSV)
    return tmp_path


def test_curves_series_gap_alerts_and_best_epoch_by_hand(hand_dir: Path, tmp_path: Path):
    m = load_metrics(hand_dir)
    r = plot_train_val(m, tmp_path / "out" / "curves.png", best_epoch=1)
    assert r.series["train_loss"] == ([0.0, 1.0, 2.0, 3.0], [1.5, 0.8, 0.4, 0.2])
    assert r.series["val_loss"] == ([0.0, 1.0, 2.0, 3.0], [2.0, 1.0, 1.2, 1.5])
    gx, gy = r.series["loss/gap"]
    assert gx == [0.0, 1.0, 2.0, 3.0]
    assert gy == pytest.approx([0.5, 0.2, 0.8, 1.3])
    assert r.markers["alerts"] == [2.0, 3.0]
    assert r.markers["first_alert"] == [2.0]
    assert r.markers["best_epoch"] == [1.0]
    assert "acc/gap" not in r.series  # the acc pair was not logged: one panel only
    assert_png(r.path)
    # min val_loss 1.0 at epoch 1; as "max" the first of the largest (2.0 at epoch 0)
    assert best_epoch_of(m, "val_loss", "min") == 1
    assert best_epoch_of(m, "val_loss", "max") == 0


ALERTS = "overfit/alert,overfit/loss_alert,overfit/acc_alert"
PER_PAIR_CSV = f"""epoch,step,train_loss,val_loss,train_acc,val_acc,{ALERTS}
0,9,1.5,2.0,0.2,0.1,0,0,0
1,19,0.8,1.0,0.5,0.4,0,0,0
2,29,0.4,0.9,0.8,0.3,1,0,1
3,39,0.2,1.5,0.9,0.5,1,1,0
"""


def test_each_panel_marks_its_own_pairs_alerts_with_legend_entries(tmp_path: Path):
    (tmp_path / "metrics.csv").write_text(PER_PAIR_CSV)
    r = plot_train_val(load_metrics(tmp_path), tmp_path / "curves.png")
    assert r.markers["alerts"] == [2.0, 3.0]  # any pair
    # the loss panel shows the loss alert only (epoch 3), not the acc alert at epoch 2, where val_loss
    # was at its best; and vice versa
    assert r.markers["loss/alerts"] == [3.0] and r.markers["acc/alerts"] == [2.0]
    assert r.legends["loss"] == [
        "train_loss",
        "val_loss",
        "train/val gap",
        "overfitting alert (overfit/loss_alert)",
        "first alert (epoch 3)",
    ]
    assert r.legends["acc"][-2:] == ["overfitting alert (overfit/acc_alert)", "first alert (epoch 2)"]
    # logs without per-pair keys (older runs): every panel shows the any-pair alerts
    (tmp_path / "metrics.csv").write_text(HAND_CSV)
    r = plot_train_val(load_metrics(tmp_path), tmp_path / "curves2.png")
    assert r.markers["loss/alerts"] == [2.0, 3.0] and "first alert (epoch 2)" in r.legends["loss"]


def test_grad_norm_series_and_fallback_to_monitor_key(hand_dir: Path, tmp_path: Path):
    r = plot_grad_norms(load_metrics(hand_dir), tmp_path / "g.png")
    assert r.series == {
        "grad/clip/norm_pre": ([4.0, 14.0, 24.0], [8.0, 4.0, 0.5]),
        "grad/clip/norm_post": ([4.0, 14.0, 24.0], [1.0, 1.0, 0.5]),
    }
    assert r.markers["clipped"] == [4.0, 14.0]  # 8 -> 1 and 4 -> 1; 0.5 stayed
    assert_png(r.path)
    (tmp_path / "mon").mkdir()
    (tmp_path / "mon" / "metrics.csv").write_text("epoch,step,grad/norm_total\n0,0,3.0\n0,1,2.0\n")
    r = plot_grad_norms(load_metrics(tmp_path / "mon"), tmp_path / "g2.png")
    assert r.series == {"grad/norm_total": ([0.0, 1.0], [3.0, 2.0])}


def test_missing_metrics_errors_list_what_was_found(tmp_path: Path):
    (tmp_path / "metrics.csv").write_text("epoch,step,lr-AdamW,my_metric\n0,0,0.1,3\n")
    m = load_metrics(tmp_path)
    with pytest.raises(MissingMetricsError, match="train_loss") as err:
        plot_train_val(m, tmp_path / "c.png")
    assert "lr-AdamW" in str(err.value) and "my_metric" in str(err.value)
    with pytest.raises(MissingMetricsError, match=r"stochastic_depth/max_rate.*found: .*my_metric"):
        plot_drop_path(m, tmp_path / "d.png")
    with pytest.raises(MissingMetricsError) as err:
        render_report(tmp_path, tmp_path / "out")
    text = str(err.value)
    for plot in ("curves", "grad_norms", "drop_path"):
        assert f"- {plot}:" in text
    assert "my_metric" in text
    assert not (tmp_path / "out" / "curves.png").exists()
    # no logs at all / several runs / a missing directory
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"notes\.txt"):
        load_metrics(tmp_path / "empty")
    for v in ("version_0", "version_1"):
        (tmp_path / "runs" / v).mkdir(parents=True)
        (tmp_path / "runs" / v / "metrics.csv").write_text("epoch,step,val_loss\n0,0,1\n")
    with pytest.raises(MissingMetricsError, match="version_0.*version_1"):
        load_metrics(tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_metrics(tmp_path / "nope")
    assert main([str(tmp_path / "nope")]) == 2


def test_custom_keys_and_cli_pairs(tmp_path: Path, capsys):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,loss/train,loss/val\n0,9,1.0,\n0,9,,1.5\n1,19,0.5,\n1,19,,1.25\n"
    )
    keys = ReportKeys(pairs={"ce": ("loss/train", "loss/val")})
    skipped: dict[str, str] = {}
    out = render_report(tmp_path, tmp_path / "o", keys=keys, best_from="loss/val:min", skipped=skipped)
    assert set(out) == {"curves"} and set(skipped) == {"grad_norms", "drop_path"}
    assert out["curves"].series["ce/gap"] == ([0.0, 1.0], [0.5, 0.75])
    assert out["curves"].markers["best_epoch"] == [1.0]
    assert main([str(tmp_path), "--out", str(tmp_path / "cli"), "--pair", "ce=loss/train,loss/val"]) == 0
    printed = capsys.readouterr().out
    assert "curves: " in printed and "grad_norms: skipped" in printed
    assert_png(tmp_path / "cli" / "curves.png")
    with pytest.raises(ValueError, match="best_from"):
        render_report(tmp_path, tmp_path / "o", keys=keys, best_from="loss/val")


# ---------------------------------------------------------------- a real short run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """4 epochs of the MNIST-1D example with every lightning-reg callback, CSV and TensorBoard loggers."""
    from example_projects.mnist1d import MNIST1DDataModule, ResNet1dClassifier

    root = tmp_path_factory.mktemp("real_run")
    data = tmp_path_factory.getbasetemp() / "lightning_reg_data"
    L.seed_everything(0)
    model = ResNet1dClassifier(widths=(8, 16), blocks_per_stage=1, drop_path_rate=0.2)
    dm = MNIST1DDataModule(data_dir=str(data / "mnist1d"), train_size=128, val_size=128, batch_size=32)
    csv_logger = CSVLogger(root, name="csv", version=0)
    tb_logger = TensorBoardLogger(root, name="tb", version=0, default_hp_metric=False)
    callbacks = _library_callbacks()
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=[csv_logger, tb_logger],
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return {"csv_dir": Path(csv_logger.log_dir), "tb_dir": Path(tb_logger.log_dir), "callbacks": callbacks}


def _library_callbacks() -> list:
    from lightning_reg import (
        EarlyStopping,
        GradientClipping,
        GradientMonitor,
        OverfittingMonitor,
        StochasticDepthScheduler,
    )

    return [
        EarlyStopping(monitor="val_loss", patience=10),
        GradientMonitor(),
        GradientClipping(algorithm="norm", max_norm=0.5),
        StochasticDepthScheduler(schedule="warmup", cutoff=0.5, cutoff_unit="fraction"),
        # alert whenever val_loss exceeds train_loss at all, so the run has alerts to mark
        OverfittingMonitor(pairs={"loss": ("train_loss", "val_loss")}, criteria={"gap": 1e-6}, verbose=False),
    ]


def test_report_from_real_run_matches_csv(real_run: dict, tmp_path: Path):
    csv_dir = real_run["csv_dir"]
    cols = csv_columns(csv_dir / "metrics.csv")
    results = render_report(csv_dir, tmp_path, best_epoch=2)
    assert "curves" in results
    for r in results.values():
        assert_png(r.path)
    curves = results["curves"]
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        rows = cols[key]
        assert len(rows) == 4  # one value per epoch
        assert curves.series[key] == ([float(e) for e, _, _ in rows], [v for _, _, v in rows])
    train = {e: v for e, _, v in cols["train_loss"]}
    gap = [v - train[e] for e, _, v in cols["val_loss"]]
    assert curves.series["loss/gap"][1] == pytest.approx(gap)
    assert curves.markers["best_epoch"] == [2.0]
    alert_epochs = [float(e) for e, _, v in cols["overfit/alert"] if v > 0]
    # criteria={"gap": 1e-6}, patience 1: an alert exactly at the epochs where val_loss > train_loss
    assert alert_epochs == [float(e) for e, _, v in cols["val_loss"] if v - train[e] > 1e-6]
    assert alert_epochs, "expected at least one alert in this run"
    assert curves.markers["alerts"] == alert_epochs and curves.markers["first_alert"] == alert_epochs[:1]
    assert curves.markers["loss/alerts"] == [float(e) for e, _, v in cols["overfit/loss_alert"] if v > 0]
    # without any flag the report marks the epoch EarlyStopping restored, from its logged key
    es = real_run["callbacks"][0]
    assert es.restored and cols["early_stopping/restored_epoch"][-1][2] == es.best_epoch
    unflagged = render_report(csv_dir, tmp_path / "unflagged")["curves"]
    assert unflagged.markers["best_epoch"] == [float(es.best_epoch)]

    grads = results["grad_norms"]
    for key in ("grad/clip/norm_pre", "grad/clip/norm_post"):
        rows = cols[key]
        assert len(rows) == 16  # 4 epochs x 4 steps, logged every step
        assert grads.series[key] == ([float(s) for _, s, _ in rows], [v for _, _, v in rows])
    pre, post = grads.series["grad/clip/norm_pre"][1], grads.series["grad/clip/norm_post"][1]
    # clipping by norm 0.5 (hand rule): post = min(pre, 0.5)
    assert post == pytest.approx([min(p, 0.5) for p in pre], rel=1e-4)
    steps = grads.series["grad/clip/norm_pre"][0]
    assert grads.markers["clipped"] == [s for s, p in zip(steps, pre) if p > 0.5 * (1 + 1e-4)]

    dp = results["drop_path"]
    rows = cols["stochastic_depth/max_rate"]
    assert dp.series["stochastic_depth/max_rate"] == ([float(s) for _, s, _ in rows], [v for _, _, v in rows])
    # warm-up over the first half of 16 steps to 0.2, then constant (hand-worked linear ramp)
    assert rows[-1][2] == pytest.approx(0.2) and rows[0][2] == pytest.approx(0.0)
    for _, step, v in rows:
        assert v == pytest.approx(min(step / 8, 1.0) * 0.2, abs=1e-6), step


def test_tensorboard_events_give_the_same_series_as_csv(real_run: dict):
    csv_m = load_metrics(real_run["csv_dir"])
    tb_m = load_metrics(real_run["tb_dir"])
    assert tb_m.sources[0].name.startswith("events.out.tfevents")
    for key in ("train_loss", "val_loss", "val_acc"):
        c, t = csv_m.series[key], tb_m.series[key]
        assert t.steps == c.steps
        assert t.epochs == c.epochs
        # TensorBoard stores float32: equal to the CSV's float32-derived values up to rounding
        assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(t.values, c.values))


def test_cli_module_entry_point(real_run: dict, tmp_path: Path):
    """``python -m lightning_reg.report LOG_DIR --out DIR`` as a user runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "lightning_reg.report", str(real_run["csv_dir"]), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("curves", "grad_norms", "drop_path"):
        assert f"{name}: {tmp_path / (name + '.png')}" in proc.stdout
        assert_png(tmp_path / f"{name}.png")


def test_matplotlib_and_tensorboard_are_imported_lazily():
    """`import lightning_reg` must work without matplotlib/tensorboard installed: the report module may
    import them only inside functions. (Lightning and torchmetrics import matplotlib themselves whenever
    it is installed, so the check is on our module's top-level statements.)"""
    import lightning_reg.report as report

    top_level = []
    for path in Path(report.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top_level += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                top_level.append(node.module or "")
    assert top_level and not [m for m in top_level if m.split(".")[0] in ("matplotlib", "tensorboard")]


def test_a_validate_after_fit_is_no_epoch_and_the_gap_is_the_probes(tmp_path: Path):
    """A fit with the monitor's eval-mode probe, then ``trainer.validate()``: what the report draws."""
    from functools import partial

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_reg import OverfittingMonitor
    from tests.helpers import LossModule, fast_trainer

    L.seed_everything(0)
    x = torch.randn(64, 4)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    logger = CSVLogger(tmp_path, name="run", version=0)
    monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")}, probe=1.0, verbose=0)
    trainer = fast_trainer(max_epochs=3, logger=logger, callbacks=[monitor])
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1))
    model = LossModule(net, partial(torch.optim.SGD, lr=0.05), loss_fn=nn.functional.mse_loss)
    trainer.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    trainer.validate(model, DataLoader(data, batch_size=32), verbose=False)
    cols = csv_columns(Path(logger.log_dir) / "metrics.csv")
    assert [e for e, _, _ in cols["val_loss"]] == [0, 1, 2, 3]  # the validate() lands at "epoch 3"
    curves = render_report(logger.log_dir, tmp_path / "plots")["curves"]
    assert curves.series["val_loss"] == ([0.0, 1.0, 2.0], [v for _, _, v in cols["val_loss"][:3]])
    # the gap drawn is the one the monitor alerts on: the eval-mode probe's, not val - train-mode train
    logged_gap = [v for _, _, v in cols["overfit/loss_gap"]]
    assert curves.series["loss/gap"] == ([0.0, 1.0, 2.0], logged_gap)
    assert logged_gap == pytest.approx([h["pairs"]["loss"]["gap"] for h in monitor.history], rel=1e-6)
    train = [v for _, _, v in cols["train_loss"]]
    train_mode_gap = [v - t for (_, _, v), t in zip(cols["val_loss"], train)]
    assert all(abs(a - b) > 1e-3 for a, b in zip(logged_gap, train_mode_gap))
    assert "gap the monitor uses (overfit/loss_gap)" in curves.legends["loss"]
    assert_png(curves.path)
