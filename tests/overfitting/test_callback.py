"""OverfittingMonitor in real Trainer runs: a module logs scripted train/val values, epochs worked by hand."""

import logging
import math
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_reg import OverfittingMonitor
from tests.helpers import PER_STEP_HOOKS, DropoutClassifier, LossModule, fast_trainer, threshold_data

# Binary-exact values (float32 logging keeps them exact). Hand-worked checks below.
TRAIN_LOSS = [1.0, 0.75, 0.5, 0.4375, 0.375, 0.3125, 0.25, 0.1875, 0.125]
VAL_LOSS = [1.0, 0.75, 0.625, 0.5, 0.53125, 0.5625, 0.5625, 0.5, 0.625]
TRAIN_ACC = [0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0, 1.0, 1.0]
VAL_ACC = [0.5, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75]
PAIRS = {"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")}
CRITERIA = {
    "gl": {"loss": 10.0},
    "pq": {"loss": 0.04},
    "up": {"loss": 2},
    "gap": {"acc": 0.25},
    "rel_gap": {"acc": 0.3},
}
# Worked by hand (strip_length k=3, patience 2, warm-up 4 checks):
#  best val loss 1,.75,.625,.5,.5,.5,.5,.5,.5 -> GL 0,0,0,0,6.25,12.5,12.5,0,25 -> gl>10 at 5,6,8
#  UP (val worse & train better than the check before): counts 0,0,0,0,1,2,0,0,1 -> up>=2 at 5
#  P_3 at 4: [.5,.4375,.375] -> 1000*(.4375-.375)/.375=166.7, PQ .0375; at 5: [.4375,.375,.3125] -> 200, PQ
#  .0625; at 6: [.375,.3125,.25] -> 250, PQ .05; at 8: [.25,.1875,.125] -> 500, PQ .05 -> pq>.04 at 5, 6, 8
#  acc gap 0,.125,.25,.375,.5,.25,.25,.25,.25 -> >.25 twice in a row only at 4
#  acc rel gap 0,.2,.333,.4286,.5,.25,... -> >.3 counts 0,0,1,2,3,0 -> fires (patience 2) at 3, 4
#  Alerts: loss fires at 5, 6, 8 with a positive gap while train loss keeps falling -> alerts 5, 6, 8;
#  acc: gap criteria (not gated) at 3 (in the warm-up) and 4 -> alert at 4. Episodes: acc at 4, loss at 5
#  and 8; one warning per check that starts an episode: epochs 4, 5, 8.
EXPECTED_FIRED = {
    "gl": [5, 6, 8],
    "up": [5],
    "pq": [5, 6, 8],
    "gap": [4],
    "rel_gap": [3, 4],
}
EXPECTED_ALERTS = {"loss": [5, 6, 8], "acc": [4]}


class CaptureLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Scripted(L.LightningModule):
    """Logs ``train[key][epoch]`` in training_step and ``val(epoch, run)`` in validation_step."""

    def __init__(self, train=None, val=None):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.train_script = train if train is not None else {"train_loss": TRAIN_LOSS, "train_acc": TRAIN_ACC}
        self.val_fn = val or (lambda epoch, run: {"val_loss": VAL_LOSS[epoch], "val_acc": VAL_ACC[epoch]})
        self.val_runs = 0

    def training_step(self, batch, batch_idx):
        for key, seq in self.train_script.items():
            self.log(key, torch.tensor(seq[self.current_epoch]), on_step=False, on_epoch=True)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        for key, value in self.val_fn(self.current_epoch, self.val_runs).items():
            self.log(key, torch.tensor(value))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_runs += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loaders():
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(8, 2, generator=g)), batch_size=2)
    val = DataLoader(TensorDataset(torch.randn(4, 2, generator=g)), batch_size=2)
    return train, val


def trainer(tmp_path, callbacks, max_epochs=9, logger=False, **kw):
    return fast_trainer(
        max_epochs=max_epochs, logger=logger, default_root_dir=tmp_path, callbacks=callbacks, **kw
    )


def fired_epochs(monitor, criterion):
    return [h["epoch"] for h in monitor.history if any(criterion in r["fired"] for r in h["pairs"].values())]


def overfit_warnings(record):
    return [
        str(w.message) for w in record if "OverfittingMonitor: overfitting at epoch" in str(w.message)
    ]


@pytest.mark.parametrize(("preset", "hint"), [("mild", "'medium'"), ("strong", "'strong' is the strongest")])
def test_the_alert_gives_the_hint_preset_callbacks_passes(tmp_path, preset, hint):
    from lightning_reg import preset_callbacks

    (given,) = [cb.hint for cb in preset_callbacks(preset) if isinstance(cb, OverfittingMonitor)]
    monitor = OverfittingMonitor(
        PAIRS, criteria=CRITERIA, warmup=4, patience=2, strip_length=3, hint=given, verbose=0
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor]).fit(Scripted(), *loaders())
    msgs = overfit_warnings(record)
    assert msgs and all(hint in m for m in msgs)


def test_overfitting_imports_nothing_from_presets():
    # the hint comes in through the constructor; an import of presets here (even inside a function) would
    # make a cycle, since presets builds the monitor
    import ast

    package = Path(__file__).parents[2] / "lightning_reg" / "overfitting"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "lightning_reg.overfitting.probe" in imported  # the scan sees the package's own imports
    assert not [m for m in imported if m.startswith("lightning_reg.") and m.split(".")[1] == "presets"]


@pytest.mark.parametrize(
    ("stopper", "advice"),
    [
        (None, 'keep the weights of epoch 3 with `lightning_reg.EarlyStopping(monitor="val_loss"'),
        ("ours", None),
        ("ours, no restore", "keep the weights of epoch 3: set `restore_best_weights=True` on the"),
        ("lightning", "Lightning's EarlyStopping on the Trainer stops without restoring them"),
    ],
)
def test_the_alert_advises_an_early_stopping_only_where_none_restores(tmp_path, stopper, advice):
    from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

    from lightning_reg import EarlyStopping

    stoppers = {
        None: [],
        "ours": [EarlyStopping("val_loss", patience=100, verbose=0)],
        "ours, no restore": [EarlyStopping("val_loss", patience=100, restore_best_weights=False, verbose=0)],
        "lightning": [LightningEarlyStopping("val_loss", patience=100)],
    }[stopper]
    monitor = OverfittingMonitor(PAIRS, criteria=CRITERIA, warmup=4, patience=2, strip_length=3, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor, *stoppers]).fit(Scripted(), *loaders())
    msgs = overfit_warnings(record)
    assert len(msgs) == 3 and "at epoch 5" in msgs[1]
    assert "regularize more: try the 'mild' preset" in msgs[1]  # the hint stays in every case
    if advice is None:
        assert not any("EarlyStopping" in m for m in msgs)
    else:
        assert advice in msgs[1]


def test_a_pair_of_scores_to_maximise_must_say_its_mode():
    with pytest.raises(ValueError, match=r"Pair 'acc'.*no mode.*'acc' names a score where higher is better"):
        OverfittingMonitor({"acc": ("train_acc", "val_acc")})
    with pytest.raises(ValueError, match=r"Write \('train/F1', 'val/F1', 'max'\)"):
        OverfittingMonitor({"f1": ("train/F1", "val/F1")})
    # given explicitly, either mode is taken as meant
    assert OverfittingMonitor({"acc": ("train_acc", "val_acc", "max")}).pairs["acc"][2] == "max"
    assert OverfittingMonitor({"acc": ("train_acc", "val_acc", "min")}).pairs["acc"][2] == "min"
    assert OverfittingMonitor({"loss": ("train_loss", "val_loss")}).pairs["loss"][2] == "min"


def test_each_criterion_fires_at_hand_worked_epoch_and_alerts_per_pair(tmp_path, caplog):
    monitor = OverfittingMonitor(PAIRS, criteria=CRITERIA, warmup=4, patience=2, strip_length=3, verbose=2)
    cap = CaptureLogger()
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], logger=cap).fit(Scripted(), *loaders())
    assert [h["epoch"] for h in monitor.history] == list(range(9))
    for criterion, epochs in EXPECTED_FIRED.items():
        assert fired_epochs(monitor, criterion) == epochs, criterion
    assert [h["pairs"]["loss"]["up_count"] for h in monitor.history] == [0, 0, 0, 0, 1, 2, 0, 0, 1]
    for pair, epochs in EXPECTED_ALERTS.items():
        assert [h["epoch"] for h in monitor.history if h["pairs"][pair]["alert"]] == epochs, pair
    # rel_gap fires at epoch 3 for acc, but the warm-up (4 checks: epochs 0-3) holds it back
    assert monitor.history[3]["pairs"]["acc"]["held_back"] == "warmup"
    assert [h["alert"] for h in monitor.history] == [False] * 4 + [True] * 3 + [False, True]
    msgs = overfit_warnings(record)
    assert len(msgs) == 3 and monitor.num_episodes == 3
    line = "OverfittingMonitor: overfitting alerts in loss from epoch 5, 8; acc from epoch 4."
    assert monitor.summary_line() == line
    assert "at epoch 4" in msgs[0] and "`acc`" in msgs[0] and "`loss`" not in msgs[0]
    assert "the train/validation gap is 0.5 (relative 0.5), above 0.25 (gap)" in msgs[0]
    assert "at epoch 5" in msgs[1] and "`loss`" in msgs[1] and "`acc`" not in msgs[1]
    assert "val_loss=0.5625 is 12.5 % worse than its best 0.5 (epoch 3)" in msgs[1]
    assert "val_loss got worse 2 checks in a row" in msgs[1] and "PQ = 0.0625" in msgs[1]
    assert "at epoch 8" in msgs[2] and "25 % worse" in msgs[2] and "PQ = 0.05" in msgs[2]
    # concrete next steps: the epoch to restore and the callback that does it, regularizers to add
    assert 'keep the weights of epoch 3 with `lightning_reg.EarlyStopping(monitor="val_loss"' in msgs[1]
    hint = "regularize more: try the 'mild' preset: RegularizedModule(preset='mild') and preset_callbacks("
    hint += "'mild')"
    assert hint in msgs[1]
    # the values seen equal the script
    assert [h["pairs"]["loss"]["train"] for h in monitor.history] == TRAIN_LOSS
    assert [h["pairs"]["acc"]["val"] for h in monitor.history] == VAL_ACC
    # logged every check: gap = val - train (loss), GL, per-pair alerts and the any-pair alert
    rows = [r for r in cap.rows if "overfit/alert" in r]
    assert len(rows) == 9
    assert [r["overfit/loss_gap"] for r in rows] == [v - t for t, v in zip(TRAIN_LOSS, VAL_LOSS)]
    assert [r["overfit/acc_gap"] for r in rows] == [t - v for t, v in zip(TRAIN_ACC, VAL_ACC)]
    assert [r["overfit/loss_gl"] for r in rows] == [0, 0, 0, 0, 6.25, 12.5, 12.5, 0, 25]
    assert [r["overfit/loss_alert"] for r in rows] == [0, 0, 0, 0, 0, 1, 1, 0, 1]
    assert [r["overfit/acc_alert"] for r in rows] == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert [r["overfit/alert"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 0, 1]
    assert rows[6]["overfit/loss_pq"] == pytest.approx(12.5 / 250)
    assert "overfit/loss_pq" not in rows[1]  # undefined before `strip_length` checks
    assert "overfit/loss_trend" not in rows[6] and "overfit/loss_trend" in rows[7]  # from the 8th check on
    # summary table at fit end (verbose=2): one row per check and pair, the pair's own alert
    starts = ("5 loss", "5 acc", "4 acc")
    table = [line for line in caplog.text.splitlines() if line.strip().startswith(starts)]
    assert len(table) == 3
    assert table[0].split()[-2:] == ["yes", "gap,rel_gap"]  # 4 acc
    assert table[1].split()[-2:] == ["yes", "gl,pq,up"]  # 5 loss
    assert table[2].split()[-1] == "no"  # 5 acc: the loss alert is not attributed to acc


def test_check_val_every_n_epoch_checks_only_epochs_with_validation(tmp_path):
    val_runs = [1.0, 0.5, 0.625]  # validation runs at epochs 1, 3, 5
    train = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")}, criteria={"gl": 20.0})
    module = Scripted(train={"train_loss": train}, val=lambda epoch, run: {"val_loss": val_runs[run]})
    trainer(tmp_path, [monitor], max_epochs=6, check_val_every_n_epoch=2).fit(module, *loaders())
    assert [h["epoch"] for h in monitor.history] == [1, 3, 5]
    assert [h["pairs"]["loss"]["train"] for h in monitor.history] == pytest.approx([0.8, 0.6, 0.4])
    assert [h["pairs"]["loss"]["val"] for h in monitor.history] == val_runs
    # GL at epoch 5: 100 * (0.625 / 0.5 - 1) = 25 > 20; epoch 3 is the best
    assert [h["pairs"]["loss"]["gl"] for h in monitor.history] == [0.0, 0.0, 25.0]
    assert [h["alert"] for h in monitor.history] == [False, False, True]


def test_val_check_interval_uses_last_validation_of_the_epoch(tmp_path):
    # 4 train batches, validation after batch 2 and 4: runs 0,1 in epoch 0; 2,3 in epoch 1; ...
    val_runs = [5.0, 1.0, 0.25, 0.5, 9.0, 0.75]
    monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")}, criteria={"gl": 60.0})
    module = Scripted(
        train={"train_loss": [0.5, 0.25, 0.125]}, val=lambda e, run: {"val_loss": val_runs[run]}
    )
    trainer(tmp_path, [monitor], max_epochs=3, val_check_interval=0.5).fit(module, *loaders())
    assert module.val_runs == 6
    assert [h["pairs"]["loss"]["val"] for h in monitor.history] == [1.0, 0.5, 0.75]
    # best 1.0 -> 0.5 -> 0.5: GL 0, 0, 50 (the mid-epoch 0.25 and 9.0 are not checks)
    assert [h["pairs"]["loss"]["gl"] for h in monitor.history] == [0.0, 0.0, 50.0]
    assert not any(h["alert"] for h in monitor.history)


def test_stop_action_stops_at_first_alert(tmp_path):
    monitor = OverfittingMonitor(
        PAIRS, criteria=CRITERIA, action="stop", warmup=4, patience=2, strip_length=3
    )
    with pytest.warns(UserWarning, match="at epoch 4.*Stopping training"):
        t = trainer(tmp_path, [monitor])
        t.fit(Scripted(), *loaders())
    assert monitor.stopped_epoch == 4
    assert t.current_epoch == 5 and len(monitor.history) == 5


def test_callable_action_called_once_per_episode(tmp_path):
    calls = []

    def action(trainer, pl_module, report):
        alerting = sorted(name for name, r in report["pairs"].items() if r["alert"])
        calls.append((trainer.current_epoch, report["new_episodes"], alerting))

    monitor = OverfittingMonitor(
        PAIRS, criteria=CRITERIA, action=action, warmup=4, patience=2, strip_length=3
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor]).fit(Scripted(), *loaders())
    # epoch 6 continues the loss episode of epoch 5: no call
    assert calls == [(4, ["acc"], ["acc"]), (5, ["loss"], ["loss"]), (8, ["loss"], ["loss"])]
    assert overfit_warnings(record) == []


def test_resume_keeps_history_and_counters(tmp_path):
    kw = dict(criteria=CRITERIA, warmup=4, patience=2, strip_length=3)
    full = OverfittingMonitor(PAIRS, **kw)
    trainer(tmp_path / "full", [full]).fit(Scripted(), *loaders())

    first = OverfittingMonitor(PAIRS, **kw)
    t1 = trainer(tmp_path / "a", [first], max_epochs=5)  # stops inside the acc episode, UP count at 1
    t1.fit(Scripted(), *loaders())
    ckpt = tmp_path / "a.ckpt"
    t1.save_checkpoint(ckpt)
    resumed = OverfittingMonitor(PAIRS, **kw)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path / "b", [resumed]).fit(Scripted(), *loaders(), ckpt_path=ckpt)
    assert resumed.history == full.history
    assert resumed.num_episodes == full.num_episodes == 3
    # the acc episode open at the checkpoint is not announced again: only the loss episodes at 5 and 8
    msgs = overfit_warnings(record)
    assert len(msgs) == 2 and "at epoch 5" in msgs[0] and "at epoch 8" in msgs[1]


def test_reused_instance_starts_fresh_unless_resuming(tmp_path):
    monitor = OverfittingMonitor(PAIRS, criteria=CRITERIA, warmup=4, patience=2, strip_length=3, verbose=0)
    trainer(tmp_path / "a", [monitor]).fit(Scripted(), *loaders())
    first = [dict(h) for h in monitor.history]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path / "b", [monitor]).fit(Scripted(), *loaders())
    assert monitor.history == first and monitor.num_episodes == 3  # not 6, not 18 checks
    assert len(overfit_warnings(record)) == 3  # every episode announced again in the new fit


def test_resume_from_checkpoints_written_by_model_checkpoint(tmp_path):
    kw = dict(criteria=CRITERIA, warmup=4, patience=2, strip_length=3, verbose=False)
    full = OverfittingMonitor(PAIRS, **kw)
    trainer(tmp_path / "full", [full]).fit(Scripted(), *loaders())
    histories = {}
    for at_train_end in (True, False):
        first = OverfittingMonitor(PAIRS, **kw)
        ckpt_dir = tmp_path / f"ckpt_{at_train_end}"
        ckpt = ModelCheckpoint(
            ckpt_dir, "{epoch}", "val_loss", save_top_k=-1, save_on_train_epoch_end=at_train_end
        )
        trainer(tmp_path, [first, ckpt], max_epochs=6, enable_checkpointing=True).fit(Scripted(), *loaders())
        resumed = OverfittingMonitor(PAIRS, **kw)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer(tmp_path, [resumed]).fit(Scripted(), *loaders(), ckpt_path=ckpt_dir / "epoch=4.ckpt")
        histories[at_train_end] = resumed.history
        skipped = [str(w.message) for w in record if "skipping the check of epoch 4" in str(w.message)]
        assert len(skipped) == (0 if at_train_end else 1)
    # saved at the end of the training epoch (Lightning's default when validating every epoch): identical
    assert histories[True] == full.history
    # saved at validation end: Lightning replays only epoch 4's end hooks without its train metrics, so that
    # check is skipped (with a warning) instead of failing; the pending validation value is checkpointed
    assert [h["epoch"] for h in histories[False]] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert histories[False][:4] == full.history[:4]


@pytest.mark.parametrize("probe_kind", ["fraction", "loader"])
def test_probe_equals_manual_eval_mode_pass(tmp_path, probe_kind):
    train_set = threshold_data(30, 0)
    # batch 8 -> probe batches of 8, 8, 8, 6: the probe mean must be weighted by batch size
    probe = 1.0 if probe_kind == "fraction" else DataLoader(TensorDataset(*train_set[:21]), batch_size=8)
    monitor = OverfittingMonitor(
        {"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")},
        criteria={"gl": 5.0},
        probe=probe,
        probe_metrics={"acc": MulticlassAccuracy(num_classes=3, average="micro")},
    )
    module = DropoutClassifier()
    train = DataLoader(train_set, batch_size=8, shuffle=True)
    val = DataLoader(threshold_data(12, 1), batch_size=6)
    trainer(tmp_path, [monitor], max_epochs=2).fit(module, train, val)
    assert all(module.train_modes) and len(module.train_modes) == 8  # dropout back on after each probe
    x, y = train_set[:] if probe_kind == "fraction" else train_set[:21]
    module.eval()
    with torch.no_grad():
        logits = module.net(x)
    expected_loss = nn.functional.cross_entropy(logits, y, reduction="sum").item() / len(y)
    expected_acc = (logits.argmax(-1) == y).float().mean().item()
    last = monitor.history[-1]["pairs"]
    assert last["loss"]["train"] == pytest.approx(expected_loss, rel=1e-6)
    assert last["acc"]["train"] == pytest.approx(expected_acc, abs=1e-7)
    # the dropout (train-mode) value differs from the probe: the probe really ran in eval mode
    module.train()
    torch.manual_seed(1)
    with torch.no_grad():
        noisy = nn.functional.cross_entropy(module.net(x), y).item()
    assert not math.isclose(noisy, expected_loss, rel_tol=1e-3)


class MetricObjects(DropoutClassifier):
    """Logs torchmetrics objects (the Lightning idiom) for both train and validation accuracy."""

    def __init__(self):
        super().__init__()
        self.train_acc = MulticlassAccuracy(num_classes=3, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch, batch_idx):
        logits = self(batch[0])
        self.train_acc(logits, batch[1])
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return nn.functional.cross_entropy(logits, batch[1])

    def validation_step(self, batch, batch_idx):
        self.val_acc(self(batch[0]), batch[1])
        self.log("val_acc", self.val_acc)


def test_probe_with_metric_objects_logged_by_the_module_leaves_them_untouched(tmp_path):
    train_set, val_set = threshold_data(30, 0), threshold_data(12, 1)
    runs = {}
    for with_monitor in (False, True):
        L.seed_everything(0, verbose=False)
        monitor = OverfittingMonitor(
            {"acc": ("train_acc", "val_acc", "max")}, criteria={"gap": 0.5}, probe=1.0
        )
        cap = CaptureLogger()
        module = MetricObjects()
        trainer(tmp_path, [monitor] if with_monitor else [], max_epochs=3, logger=cap).fit(
            module, DataLoader(train_set, batch_size=8, shuffle=True), DataLoader(val_set, batch_size=5)
        )
        rows = [{k: v for k, v in r.items() if k in ("train_acc", "val_acc")} for r in cap.rows]
        runs[with_monitor] = ([r for r in rows if r], module, monitor)
    # the module's own train/val accuracies are exactly those of a run without the probe
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 6
    module, monitor = runs[True][1], runs[True][2]
    module.eval()
    with torch.no_grad():
        expected = (module(train_set[:][0]).argmax(-1) == train_set[:][1]).float().mean().item()
    assert monitor.history[-1]["pairs"]["acc"]["train"] == pytest.approx(expected, abs=1e-7)


def test_metric_never_logged_lists_logged_keys(tmp_path):
    monitor = OverfittingMonitor({"loss": ("train_loss", "val_los")})
    with pytest.raises(MisconfigurationException, match=r"\['val_los'\] were never logged.*'val_loss'"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(Scripted(), *loaders())
    monitor = OverfittingMonitor({"loss": ("train_loss_epoch", "val_loss")})
    with pytest.raises(MisconfigurationException, match=r"\['train_loss_epoch'\].*'train_acc', 'train_loss'"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(Scripted(), *loaders())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"action": "halt"}, ValueError, r"`action` must be one of 'warn', 'stop' or a callable.*'halt'"),
        ({"criteria": {"gl": -5.0}}, ValueError, r"'gl'.*> 0.*-5.0"),
        ({"criteria": {"overfit": 1.0}}, ValueError, r"Unknown criterion 'overfit'"),
        ({"warmup": -1}, ValueError, r"warmup.*-1"),
        ({"pairs": {"loss": ("train_loss", "val_loss", "down")}}, ValueError, r"'min', 'max'; got 'down'"),
        ({"pairs": {"loss": ("train_loss",)}}, ValueError, r"\(train_key, val_key\)"),
        ({"pairs": {}}, ValueError, r"non-empty"),
        ({"probe": 1.5}, ValueError, r"`probe` must be None, a number in \(0, 1\].*DataLoader; got 1.5"),
        ({"probe": "all"}, TypeError, r"`probe` must be None, a number.*got 'all'"),
        ({"criteria": {"gl": 0.05}}, ValueError, r"percent.*0.05 %.*Write 5 for 5 %"),
        ({"criteria": {"trend": 0.5}}, ValueError, r"'trend'.*percent.*Write 50 for 50 %"),
        ({"window": 2}, ValueError, r"`window` must be an int >= 3; got 2"),
        ({"verbose": 3}, ValueError, r"`verbose` must be an int in \[0, 2\]; got 3"),
        ({"probe_metrics": {"loss": MulticlassAccuracy(num_classes=3)}}, ValueError, r"needs `probe`"),
        ({"probe": 0.5, "probe_metrics": {"los": MulticlassAccuracy(num_classes=3)}}, ValueError, r"'los'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"pairs": {"loss": ("train_loss", "val_loss")}, **kwargs}
    with pytest.raises(error, match=match):
        OverfittingMonitor(**kwargs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_stop_stops_all_ranks(tmp_path):
    from tests.distributed.launch import run_ddp_script

    script = Path(__file__).parents[1] / "distributed" / "ddp_overfitting.py"
    run_ddp_script(script, tmp_path, timeout=240)
    for name, stop_epoch in (("synced", 3), ("unsynced", 4)):
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert all(d["world_size"] == 2 for d in ranks)
        # both ranks stop after the same epoch (current_epoch counts completed epochs)
        assert [d["stopped_epoch"] for d in ranks] == [stop_epoch, stop_epoch], name
        assert [d["current_epoch"] for d in ranks] == [stop_epoch + 1, stop_epoch + 1], name
    synced = [torch.load(tmp_path / f"synced_rank{r}.pt", weights_only=False)["history"] for r in (0, 1)]
    # rank 0 logs val 0.5, rank 1 logs 0.625 at epoch 3: the mean 0.5625 is GL 12.5 > 10 on both ranks
    assert synced[0] == synced[1]
    assert synced[0][3]["pairs"]["loss"]["val"] == (0.5 + 0.625) / 2
    assert synced[0][3]["pairs"]["loss"]["gl"] == 12.5
    assert [h["alert"] for h in synced[0]] == [False, False, False, True]
    unsynced = [torch.load(tmp_path / f"unsynced_rank{r}.pt", weights_only=False)["history"] for r in (0, 1)]
    # without sync only rank 1 sees GL 50 > 30; rank 0 stops because the decision is reduced with "any"
    assert [h["alert"] for h in unsynced[0]] == [False] * 5
    assert [h["alert"] for h in unsynced[1]] == [False] * 4 + [True]
    # probe sharded over the ranks (15 samples each) and reduced: both ranks see the full-set eval-mode value
    probe = [torch.load(tmp_path / f"probe_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert probe[0]["history"] == probe[1]["history"]
    model = DropoutClassifier()
    model.load_state_dict(probe[0]["state_dict"])
    model.eval()
    x, y = threshold_data(30, 0)[:]
    with torch.no_grad():
        logits = model(x)
    pairs = probe[0]["history"][-1]["pairs"]
    assert pairs["loss"]["train"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert pairs["acc"]["train"] == pytest.approx((logits.argmax(-1) == y).float().mean().item(), abs=1e-7)


@pytest.fixture(scope="session")
def mnist1d_small(tmp_path_factory):
    """MNIST-1D generated locally (never downloaded): 400 train / 100 validation samples, cached as .npz."""
    import numpy as np

    cache = tmp_path_factory.getbasetemp() / "mnist1d_500.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = 500  # 400 train (train_split 0.8) + 100 test; ~4 s to generate here
        data = make_dataset(args)
        np.savez(cache, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
    arrays = np.load(cache)
    return tuple(torch.as_tensor(arrays[k]) for k in ("x", "y", "x_test", "y_test"))


def mlp(hidden, dropout, weight_decay):
    net = nn.Sequential(
        nn.Linear(40, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )
    return LossModule(net, partial(torch.optim.AdamW, lr=3e-3, weight_decay=weight_decay))


def test_mnist1d_alerts_without_regularization_and_later_or_never_with_it(tmp_path, mnist1d_small):
    x, y, x_test, y_test = mnist1d_small
    assert len(x) == 400 and len(x_test) == 100
    first_alert = {}
    for name, (hidden, dropout, wd) in {"plain": (256, 0.0, 0.0), "regularized": (32, 0.5, 0.1)}.items():
        L.seed_everything(0, verbose=False)
        monitor = OverfittingMonitor(
            {"loss": ("train_loss", "val_loss")}, criteria={"gl": 10.0, "up": 3}, warmup=3, verbose=False
        )
        train = DataLoader(TensorDataset(x.float(), y), batch_size=50, shuffle=True)
        val = DataLoader(TensorDataset(x_test.float(), y_test), batch_size=100)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer(tmp_path / name, [monitor], max_epochs=25).fit(mlp(hidden, dropout, wd), train, val)
        alerts = [h["epoch"] for h in monitor.history if h["alert"]]
        first_alert[name] = alerts[0] if alerts else None
        assert len(overfit_warnings(record)) == monitor.num_episodes
        if name == "plain":
            last = monitor.history[-1]["pairs"]["loss"]
            assert last["train"] < 0.1 < 1.0 < last["val"]  # it memorized the 400 samples
    print(f"first alert epoch: {first_alert}")
    assert first_alert["plain"] is not None
    assert first_alert["regularized"] is None or first_alert["regularized"] > first_alert["plain"]


def test_configurable_from_yaml_like_lightning_cli():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(OverfittingMonitor, "monitor")
    cfg = parser.parse_string(
        """
        monitor:
          pairs: {loss: [train_loss, val_loss], acc: [train_acc, val_acc, max]}
          criteria: {gl: 5.0, up: 3, gap: {acc: 0.15}}
          action: stop
          warmup: 2
          probe: 0.1
        """
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    monitor = instantiate(cfg).monitor
    assert monitor.pairs == {
        "loss": ("train_loss", "val_loss", "min"),
        "acc": ("train_acc", "val_acc", "max"),
    }
    assert monitor.criteria == {
        "gl": {"loss": 5.0, "acc": 5.0},
        "up": {"loss": 3, "acc": 3},
        "gap": {"acc": 0.15},
    }
    assert (monitor.action, monitor.warmup, monitor.probe) == ("stop", 2, 0.1)


def test_no_per_step_work():
    # the monitor must cost nothing on the training hot path: it overrides no per-batch hook
    from lightning.pytorch.callbacks import Callback

    per_step = [*PER_STEP_HOOKS, "on_validation_batch_end"]
    assert [h for h in per_step if getattr(OverfittingMonitor, h) is not getattr(Callback, h)] == []


@pytest.mark.gpu
def test_probe_on_cuda_matches_manual_pass(tmp_path):
    train_set = threshold_data(30, 0)
    monitor = OverfittingMonitor(
        {"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")},
        criteria={"gl": 5.0},
        probe=1.0,
        probe_metrics={"acc": MulticlassAccuracy(num_classes=3, average="micro")},
    )
    module = DropoutClassifier()
    train = DataLoader(train_set, batch_size=8, shuffle=True)
    trainer(tmp_path, [monitor], max_epochs=2, accelerator="gpu", devices=1).fit(
        module, train, DataLoader(threshold_data(12, 1), batch_size=6)
    )
    module.eval().cpu()
    x, y = train_set[:]
    with torch.no_grad():
        logits = module(x)
    last = monitor.history[-1]["pairs"]
    assert last["loss"]["train"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert last["acc"]["train"] == pytest.approx((logits.argmax(-1) == y).float().mean().item(), abs=1e-6)


def test_probe_refused_under_sharded_strategies():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")}, probe=0.5)
    with pytest.raises(MisconfigurationException, match="not supported with FSDPStrategy"):
        monitor.setup(SimpleNamespace(strategy=FSDPStrategy()), DropoutClassifier(), "fit")
    # without a probe the monitor works with any strategy
    OverfittingMonitor({"loss": ("train_loss", "val_loss")}).setup(
        SimpleNamespace(strategy=FSDPStrategy()), DropoutClassifier(), "fit"
    )


def test_negative_gap_is_never_called_overfitting_and_the_hint_says_what_to_do(tmp_path):
    # train loss measured on mixed/dropped-out batches stays above validation although validation rises
    train = [2.0, 1.875, 1.75, 1.625, 1.5, 1.375, 1.25]
    val = [1.0, 0.5, 0.5625, 0.625, 0.6875, 0.75, 0.8125]
    monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")}, criteria={"gl": 5.0}, verbose=0)
    module = Scripted(train={"train_loss": train}, val=lambda e, run: {"val_loss": val[e]})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=7).fit(module, *loaders())
    assert fired_epochs(monitor, "gl") == [2, 3, 4, 5, 6]
    assert not any(h["alert"] for h in monitor.history) and overfit_warnings(record) == []
    assert {h["pairs"]["loss"]["held_back"] for h in monitor.history[2:]} == {"negative gap"}
    hints = [str(w.message) for w in record if "not called overfitting" in str(w.message)]
    assert len(hints) == 1 and "val_loss is getting worse while train_loss improves (epoch 2)" in hints[0]
    assert "Set `probe=0.1`" in hints[0]


def test_warns_when_a_train_key_is_logged_per_step_only(tmp_path):
    class StepOnly(Scripted):
        def training_step(self, batch, batch_idx):
            # Lightning's default in training_step: per step only
            self.log("train_loss", torch.tensor(TRAIN_LOSS[self.current_epoch]))
            self.log("train_acc", torch.tensor(TRAIN_ACC[self.current_epoch]), on_epoch=True)
            return self.layer(batch[0]).pow(2).mean()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [OverfittingMonitor(PAIRS, verbose=0)], max_epochs=3).fit(StepOnly(), *loaders())
    msgs = [str(w.message) for w in record if "logged per step only" in str(w.message)]
    assert len(msgs) == 1  # once per fit, and not for train_acc (logged with on_epoch=True)
    assert "`train_loss` (pair 'loss')" in msgs[0] and "on_epoch=True" in msgs[0]


def test_probe_uses_the_batch_size_of_a_batch_sampler(tmp_path):
    from torch.utils.data import BatchSampler, SequentialSampler

    sizes = []

    def forward(pl_module, batch):
        sizes.append(len(batch[0]))
        return pl_module(batch[0]), batch[1]

    train_set = threshold_data(30, 0)
    monitor = OverfittingMonitor(
        {"acc": ("train_acc", "val_acc", "max")},
        criteria={"gl": 5.0},
        probe=1.0,
        probe_metrics={"acc": MulticlassAccuracy(num_classes=3, average="micro")},
        probe_forward=forward,
        verbose=0,
    )
    batches = BatchSampler(SequentialSampler(train_set), 8, drop_last=False)
    train = DataLoader(train_set, batch_sampler=batches)

    class WithAcc(DropoutClassifier):
        def training_step(self, batch, batch_idx):
            self.log("train_acc", 0.5, on_epoch=True, on_step=False)
            return super().training_step(batch, batch_idx)

    val = DataLoader(threshold_data(12, 1), 6)
    trainer(tmp_path, [monitor], max_epochs=1).fit(WithAcc(), train, val)
    assert sizes == [8, 8, 8, 6]  # the training batches' size (not 30 batches of one sample)
