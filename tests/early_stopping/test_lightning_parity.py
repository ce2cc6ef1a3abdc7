"""Every scenario of Lightning 2.6's own EarlyStopping tests, written here, run on our class and Lightning's.

The scenarios (and their expected epochs) are those of Lightning-AI/pytorch-lightning 2.6's
``tests/tests_pytorch/callbacks/test_early_stopping.py``: state key, state saved in and reloaded from
checkpoints, no extra check calls, patience on validation and on training metrics (with and without
``validation_step``), pickling, no validation loop, thresholds, non-finite values, ``min_epochs`` /
``min_steps``, mode validation, several callbacks (``ddp_spawn`` variants: ``test_distributed.py``),
``check_on_train_epoch_end`` chosen from the validation schedule, squeezing, log messages per rank, and every
stopping reason. Each scenario runs with both classes; stop epochs, reasons, counters and state must match
(documented differences aside).
"""

from __future__ import annotations

import math
import pickle
from unittest import mock

import cloudpickle
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg import EarlyStopping
from lightning_reg._shared.lightning_compat import LIGHTNING_TRACKS_STOPPING_REASON, EarlyStoppingReason
from lightning_reg.early_stopping import callback as early_stopping_callback
from tests.helpers import fast_trainer

CLASSES = [EarlyStopping, LightningEarlyStopping]


def _has_reasons(cls) -> bool:
    """Lightning < 2.6 records no stopping reason: its class is compared on everything else."""
    return cls is EarlyStopping or LIGHTNING_TRACKS_STOPPING_REASON


def _trainer(callbacks, **kwargs) -> L.Trainer:
    opts = dict(max_epochs=10, limit_train_batches=2, limit_val_batches=1)
    return fast_trainer(callbacks=callbacks, **{**opts, **kwargs})


class ValSequence(BoringModel):
    def __init__(self, values, key: str = "val_loss", on_train: bool = False) -> None:
        super().__init__()
        self.values, self.key, self.on_train = values, key, on_train

    def _log(self) -> None:
        i = min(self.current_epoch, len(self.values) - 1)
        self.log(self.key, torch.tensor(float(self.values[i])))

    def on_validation_epoch_end(self):
        if not self.on_train:
            self._log()

    def on_train_epoch_end(self):
        if self.on_train:
            self._log()


def _state(es) -> tuple:
    if not LIGHTNING_TRACKS_STOPPING_REASON:
        return (es.stopped_epoch, es.wait_count)
    return (es.stopped_epoch, es.stopping_reason, es.wait_count, es.stopping_reason_message)


def test_state_key_is_lightnings():
    assert (
        EarlyStopping(monitor="val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    )
    assert EarlyStopping("a", mode="max").state_key == LightningEarlyStopping("a", mode="max").state_key


def recording(cls):
    """``cls`` that keeps its state after every epoch's check and the state it starts training with."""

    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.per_epoch, self.at_train_start = [], None

        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)
            self.at_train_start = dict(self.state_dict())

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            self.per_epoch.append(dict(self.state_dict()))

    return Recording


@pytest.mark.parametrize("cls", CLASSES)
def test_state_saved_in_checkpoint_equals_state_and_reloads(tmp_path, cls):
    # the checkpoint holds exactly the callback's state at that epoch, comparable with `==` (plain values);
    # a new instance resumed from it starts training with that state
    losses = [3.0, 2.0, 2.5, 1.0, 1.5]
    es = recording(cls)(monitor="val_loss", patience=5)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    _trainer([es, ckpt], max_epochs=5, enable_checkpointing=True).fit(ValSequence(losses))
    checkpoint = torch.load(ckpt.best_model_path, weights_only=True)  # a plain-values state loads safely
    assert checkpoint["epoch"] == 3
    saved = checkpoint["callbacks"][es.state_key]
    assert saved == es.per_epoch[3] != es.per_epoch[4]
    assert not any(isinstance(v, dict) for v in saved.values())  # no weights inside the callback state
    es2 = recording(cls)(monitor="val_loss", patience=5)
    _trainer([es2], max_epochs=6).fit(ValSequence(losses + [0.5]), ckpt_path=ckpt.best_model_path)
    assert es2.at_train_start == saved


@pytest.mark.parametrize("cls", CLASSES)
def test_check_runs_once_per_epoch(cls):
    es = cls(monitor="val_loss")
    with mock.patch.object(es, "_run_early_stopping_check") as check:
        trainer = _trainer([es], max_epochs=4)
        trainer.fit(ValSequence([1.0]))
    assert check.call_count == 4
    assert trainer.early_stopping_callback is es and trainer.early_stopping_callbacks == [es]


@pytest.mark.parametrize(
    ("loss_values", "patience", "expected_stop_epoch"),
    [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)],
)
@pytest.mark.parametrize("on_train", [False, True, "no_validation_step"])
def test_patience(loss_values, patience, expected_stop_epoch, on_train):
    results = []
    for cls in CLASSES:
        model = ValSequence(loss_values, on_train=bool(on_train))
        if on_train == "no_validation_step":
            model.validation_step = None
        kwargs = {"check_on_train_epoch_end": True} if on_train else {}
        es = cls(monitor="val_loss", patience=patience, verbose=True, **kwargs)
        trainer = _trainer([es])
        trainer.fit(model)
        assert trainer.current_epoch - 1 == expected_stop_epoch
        if _has_reasons(cls):
            assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        results.append((_state(es), es.best_score.item()))
        if cls is EarlyStopping:  # ours also knows where the best was: the first epoch with the minimum
            seen = loss_values[: expected_stop_epoch + 1]
            assert es.best_epoch == seen.index(min(seen))
    assert results[0] == results[1]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickling_preserves_vars(dumps):
    es = EarlyStopping(monitor="foo", snapshot="device", start_from_epoch=2)
    loaded = pickle.loads(dumps(es))
    assert vars(loaded) == vars(es)
    assert loaded.snapshot == "device" and loaded.start_from_epoch == 2 and loaded.monitor == "foo"
    # also after a fit, with a weight snapshot and a best score inside
    es = EarlyStopping(monitor="val_loss", patience=1)
    _trainer([es], max_epochs=4).fit(ValSequence([3.0, 2.0, 2.5, 1.0]))
    assert es._weights.has_value and es.best_epoch == 1

    def own(cb):  # Lightning attaches the module's bound `log`/`log_dict` to every callback at fit
        return {k: v for k, v in vars(cb).items() if k not in ("log", "log_dict")}

    loaded = pickle.loads(dumps(es))
    assert own(loaded) == own(es)
    loaded._weights.buffers[0].add_(1.0)
    assert own(loaded) != own(es)  # the snapshot really is compared by value


@pytest.mark.parametrize("cls", CLASSES)
def test_training_metric_without_validation_loop(cls):
    # no validation at all: the check follows the training metric and stops on the first non-improvement
    class Model(BoringModel):
        def on_train_epoch_end(self):
            self.log("train_loss", torch.tensor([1.0, 0.5, 0.45, 0.3][min(self.current_epoch, 3)]))

    model = Model()
    model.validation_step = None
    model.val_dataloader = None
    es = cls(monitor="train_loss", min_delta=0.1, patience=0, check_on_train_epoch_end=True)
    trainer = _trainer([es])
    trainer.fit(model)
    assert trainer.state.finished and es.stopped_epoch == 2 and trainer.current_epoch == 3


@pytest.mark.parametrize(
    ("stopping_threshold", "divergence_threshold", "losses", "expected_epoch"),
    [
        (None, None, [8, 4, 2, 3, 4, 5, 8, 10], 5),
        (2.9, None, [9, 8, 7, 6, 5, 6, 4, 3, 2, 1], 8),
        (None, 15.9, [9, 4, 2, 16, 32, 64], 3),
    ],
)
def test_thresholds(stopping_threshold, divergence_threshold, losses, expected_epoch):
    states = []
    for cls in CLASSES:
        es = cls(
            monitor="abc", stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold
        )
        trainer = _trainer([es], max_epochs=20)
        trainer.fit(ValSequence(losses, key="abc"))
        assert trainer.current_epoch - 1 == expected_epoch
        states.append((_state(es), es.best_score.item()))
    ours, theirs = states
    assert ours[0] == theirs[0]
    if stopping_threshold is not None:
        # deliberate difference: the value that reached the threshold (2, at epoch 8) is the best seen;
        # Lightning leaves best_score at the previous best (3)
        assert (ours[1], theirs[1]) == (2.0, 3.0)
    else:
        assert ours[1] == theirs[1] == min(losses[: expected_epoch + 1])


@pytest.mark.parametrize("stop_value", [math.inf, math.nan])
def test_non_finite(stop_value):
    losses = [4, 3, stop_value, 2, 1]
    for cls in CLASSES:
        es = cls(monitor="val_loss", check_finite=True)
        trainer = _trainer([es])
        trainer.fit(ValSequence(losses))
        assert trainer.current_epoch - 1 == 2
        assert es.stopped_epoch == 2
        if _has_reasons(cls):
            assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
        assert es.best_score.item() == 3


@pytest.mark.parametrize(
    ("limit_train_batches", "min_epochs", "min_steps", "stop_step"),
    [(3, 0, 10, 10), (5, 0, 10, 10), (3, 2, 0, 6), (5, 2, 0, 10), (3, 1, 10, 10), (5, 3, 10, 15)],
)
def test_min_epochs_min_steps(limit_train_batches, min_epochs, min_steps, stop_step):
    class TestModel(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", batch_idx)
            return super().training_step(batch, batch_idx)

    expected_epochs = max(math.ceil(min_steps / limit_train_batches), min_epochs)
    for cls in CLASSES:
        es = cls("foo")
        trainer = _trainer(
            [es],
            limit_val_batches=0,
            limit_train_batches=limit_train_batches,
            min_epochs=min_epochs,
            min_steps=min_steps,
            max_epochs=None,
        )
        with mock.patch.object(es, "_evaluate_stopping_criteria", side_effect=[(True, "")] * expected_epochs):
            trainer.fit(TestModel())
        assert trainer.should_stop
        assert trainer.current_epoch == expected_epochs
        assert trainer.global_step == stop_step


def test_mode_is_validated_as_lightning_does():
    for cls in CLASSES:
        with pytest.raises(MisconfigurationException, match="`mode` can be .* got unknown_option"):
            cls(monitor="foo", mode="unknown_option")


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("order", [0, 1])
def test_multiple_callbacks_stop_when_any_does(check, order):
    losses = [8, 4, 2, 3, 4, 5, 8, 10]

    class Model(BoringModel):
        def _both(self):
            self.log("abc", torch.tensor(float(losses[self.current_epoch])))
            self.log("cba", torch.tensor(0.0))

        def on_validation_epoch_end(self):
            if not check:
                self._both()

        def on_train_epoch_end(self):
            if check:
                self._both()

    for cls in CLASSES:
        cbs = [
            cls("abc", check_on_train_epoch_end=check),
            cls("cba", patience=3, check_on_train_epoch_end=check),
        ]
        if order:
            cbs.reverse()
        trainer = _trainer(cbs, max_epochs=20)
        trainer.fit(Model())
        assert trainer.current_epoch - 1 == 3
        if cls is EarlyStopping:  # both restore; the later hook wins; each records its own best epoch
            abc = next(c for c in cbs if c.monitor == "abc")
            cba = next(c for c in cbs if c.monitor == "cba")
            assert abc.best_epoch == 2 and cba.best_epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "expected_checks", "check"),
    [
        # validation 3 times per epoch of 10 batches (after batches 3, 6, 9): check after each validation
        ({"val_check_interval": 0.3, "limit_train_batches": 10}, 2, lambda t: t.global_step == 6),
        # validation every other epoch: check after validation, i.e. at the end of epochs 1 and 3
        ({"check_val_every_n_epoch": 2, "max_epochs": 5}, 2, lambda t: t.current_epoch == 4),
    ],
)
def test_check_on_train_epoch_end_follows_validation_schedule(kwargs, expected_checks, check):
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("foo", 1.0)
            return super().validation_step(batch, batch_idx)

    for cls in CLASSES:
        es = cls(monitor="foo")
        trainer = _trainer([es], **{"limit_train_batches": 2, **kwargs})
        side_effect = [(False, "A"), (True, "B")]
        with mock.patch.object(es, "_evaluate_stopping_criteria", side_effect=side_effect) as evaluate:
            trainer.fit(Model())
        assert evaluate.call_count == expected_checks and check(trainer)
        assert es._check_on_train_epoch_end is False


def test_a_reused_instance_decides_the_validation_schedule_again():
    # Lightning's class keeps the decision of its first fit; ours decides at every fit
    es = EarlyStopping(monitor="val_loss", patience=10)
    _trainer([es], max_epochs=1).fit(ValSequence([1.0]))
    assert es._check_on_train_epoch_end is True
    _trainer([es], max_epochs=2, check_val_every_n_epoch=2).fit(ValSequence([1.0]))
    assert es._check_on_train_epoch_end is False


def test_monitored_value_is_squeezed():
    for cls in CLASSES:
        es = cls(monitor="foo")
        trainer = L.Trainer(logger=False)
        trainer.callback_metrics["foo"] = torch.tensor([[[0.0]]])
        with mock.patch.object(es, "_evaluate_stopping_criteria", return_value=(False, "")) as evaluate:
            es._run_early_stopping_check(trainer)
        evaluate.assert_called_once()
        assert evaluate.call_args.args[0].shape == ()


@pytest.mark.parametrize(
    ("log_rank_zero_only", "world_size", "global_rank", "expected"),
    [
        (False, 1, 0, "bar"),
        (False, 2, 0, "[rank: 0] bar"),
        (False, 2, 1, "[rank: 1] bar"),
        (True, 1, 0, "bar"),
        (True, 2, 0, "[rank: 0] bar"),
        (True, 2, 1, None),
    ],
)
def test_log_messages_per_rank(log_rank_zero_only, world_size, global_rank, expected):
    trainer = mock.Mock(global_rank=global_rank, world_size=world_size)
    with mock.patch("lightning.pytorch.callbacks.early_stopping.log.info") as info:
        EarlyStopping._log_info(trainer, "bar", log_rank_zero_only)
    if expected:
        info.assert_called_once_with(expected)
    else:
        info.assert_not_called()


@pytest.mark.parametrize(
    ("losses", "kwargs", "max_epochs", "reason", "substring"),
    [
        ([10.0], {"patience": 2}, 10, EarlyStoppingReason.PATIENCE_EXHAUSTED, "did not improve"),
        ([5.0, 3.0, 1.0, 0.5, 0.1], {"stopping_threshold": 0.6}, 10, EarlyStoppingReason.STOPPING_THRESHOLD,
         "Stopping threshold reached"),
        ([1.0, 2.0, 5.0, 10.0, 15.0], {"divergence_threshold": 8.0}, 10,
         EarlyStoppingReason.DIVERGENCE_THRESHOLD, "Divergence threshold reached"),
        ([1.0, 0.5, math.nan], {}, 10, EarlyStoppingReason.NON_FINITE_METRIC, "is not finite"),
        ([5.0, 4.0, 3.0], {"patience": 3}, 3, EarlyStoppingReason.NOT_STOPPED, None),
    ],
)  # fmt: skip
@pytest.mark.parametrize("inferred", [False, True], ids=["as-installed", "inferred"])
def test_stopping_reasons(losses, kwargs, max_epochs, reason, substring, inferred, monkeypatch):
    if inferred:  # what ours does on Lightning < 2.6 must give Lightning 2.6's reasons
        monkeypatch.setattr(early_stopping_callback, "LIGHTNING_TRACKS_STOPPING_REASON", False)
    for cls in filter(_has_reasons, CLASSES):
        es = cls(monitor="val_loss", verbose=True, **kwargs)
        _trainer([es], max_epochs=max_epochs).fit(ValSequence(losses))
        assert es.stopping_reason == reason
        if substring is None:
            assert es.stopping_reason_message is None and es.stopped_epoch == 0
        else:
            assert substring in es.stopping_reason_message and es.stopped_epoch > 0


def test_stopping_reason_survives_state_dict_and_old_states_load():
    for cls in filter(_has_reasons, CLASSES):
        es = cls(monitor="val_loss", patience=3)
        es.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
        es.stopping_reason_message = "Test message"
        fresh = cls(monitor="val_loss", patience=3)
        fresh.load_state_dict(es.state_dict())
        assert (fresh.stopping_reason, fresh.stopping_reason_message) == (
            EarlyStoppingReason.PATIENCE_EXHAUSTED,
            "Test message",
        )
        # a state written before stopping reasons existed
        old = cls(monitor="val_loss", patience=3)
        old_state = {"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3}
        old.load_state_dict(old_state)
        assert old.stopping_reason == EarlyStoppingReason.NOT_STOPPED and old.stopping_reason_message is None
        assert (old.wait_count, old.stopped_epoch, old.best_score.item()) == (2, 5, 0.5)


def test_state_dict_is_lightnings_plus_plain_values():
    ours, theirs = EarlyStopping("val_loss"), LightningEarlyStopping("val_loss")
    for es in (ours, theirs):
        es.wait_count, es.stopped_epoch, es.best_score = 2, 5, torch.tensor(0.25)
    s_ours, s_theirs = ours.state_dict(), theirs.state_dict()
    extra = {"best_epoch", "best_step", "start_from_epoch"}
    if not LIGHTNING_TRACKS_STOPPING_REASON:  # what Lightning >= 2.6 saves, ours saves on older releases
        extra |= {"stopping_reason", "stopping_reason_message"}
    assert set(s_ours) - set(s_theirs) == extra
    assert all(s_ours[k] == s_theirs[k] for k in s_theirs)
    # a Lightning checkpoint state loads into ours (weights absent: nothing to restore)
    fresh = EarlyStopping("val_loss")
    fresh.load_state_dict(s_theirs)
    assert fresh.wait_count == 2 and fresh.best_score.item() == 0.25 and fresh.best_epoch is None
