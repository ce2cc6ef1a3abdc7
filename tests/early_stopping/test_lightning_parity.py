"""Lightning's own EarlyStopping scenarios, run against our class and Lightning's.

Ported from ``tests/tests_pytorch/callbacks/test_early_stopping.py`` of Lightning-AI/pytorch-lightning
(scenarios and expected epochs are Lightning's): patience, training-metric patience, thresholds,
non-finite values, ``min_epochs``/``min_steps``, mode validation, multiple callbacks, state key, pickling,
resume state. Every scenario runs with both classes; the stop epoch, reason and counters must match.
"""

from __future__ import annotations

import math
import pickle
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg import EarlyStopping

CLASSES = [EarlyStopping, LightningEarlyStopping]


def _trainer(callbacks, **kwargs) -> L.Trainer:
    opts = dict(
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    opts.update(kwargs)
    return L.Trainer(callbacks=callbacks, **opts)


class ValSequence(BoringModel):
    def __init__(self, values, key: str = "val_loss", on_train: bool = False) -> None:
        super().__init__()
        self.values, self.key, self.on_train = values, key, on_train

    def _log(self) -> None:
        self.log(self.key, torch.tensor(float(self.values[self.current_epoch])))

    def on_validation_epoch_end(self):
        if not self.on_train:
            self._log()

    def on_train_epoch_end(self):
        if self.on_train:
            self._log()


def _state(es) -> tuple:
    return (es.stopped_epoch, es.stopping_reason, es.wait_count, es.stopping_reason_message)


@pytest.mark.parametrize(
    ("loss_values", "patience", "expected_stop_epoch"),
    [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)],
)
@pytest.mark.parametrize("on_train", [False, True])
def test_patience(loss_values, patience, expected_stop_epoch, on_train):
    results = []
    for cls in CLASSES:
        model = ValSequence(loss_values, on_train=on_train)
        kwargs = {"check_on_train_epoch_end": True} if on_train else {}
        es = cls(monitor="val_loss", patience=patience, **kwargs)
        trainer = _trainer([es])
        trainer.fit(model)
        assert trainer.current_epoch - 1 == expected_stop_epoch
        assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        results.append((_state(es), es.best_score.item()))
        if cls is EarlyStopping:  # ours also knows where the best was: the first epoch with the minimum
            seen = loss_values[: expected_stop_epoch + 1]
            assert es.best_epoch == seen.index(min(seen))
    assert results[0] == results[1]


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
        assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
        assert es.best_score.item() == 3


@pytest.mark.parametrize(
    ("limit_train_batches", "min_epochs", "min_steps", "stop_step"),
    [(3, 0, 10, 10), (5, 2, 0, 10), (5, 3, 10, 15)],
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


def test_mode_and_state_key():
    for cls in CLASSES:
        with pytest.raises(MisconfigurationException, match="`mode` can be .* got unknown_option"):
            cls(monitor="foo", mode="unknown_option")
    assert (
        EarlyStopping(monitor="val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    )
    assert EarlyStopping("a", mode="max").state_key.replace("EarlyStopping", "") == LightningEarlyStopping(
        "a", mode="max"
    ).state_key.replace("EarlyStopping", "")


def test_pickling():
    es = EarlyStopping(monitor="foo", snapshot="device", start_from_epoch=2)
    loaded = pickle.loads(pickle.dumps(es))
    assert loaded.snapshot == "device" and loaded.start_from_epoch == 2 and loaded.monitor == "foo"


def test_multiple_callbacks_single_device():
    losses = [8, 4, 2, 3, 4, 5, 8, 10]

    class Model(BoringModel):
        def on_validation_epoch_end(self):
            self.log("abc", torch.tensor(float(losses[self.current_epoch])))
            self.log("cba", torch.tensor(0.0))

    for check in (False, True):
        for order in (0, 1):
            cbs = [
                EarlyStopping("abc", check_on_train_epoch_end=check),
                EarlyStopping("cba", patience=3, check_on_train_epoch_end=check),
            ]
            if order:
                cbs.reverse()
            trainer = _trainer(cbs, max_epochs=20)
            trainer.fit(Model())
            assert trainer.current_epoch - 1 == 3
            abc = next(c for c in cbs if c.monitor == "abc")
            cba = next(c for c in cbs if c.monitor == "cba")
            # both restore; the later hook wins, and both record their own best epoch
            assert abc.best_epoch == 2 and cba.best_epoch == 0


def test_state_dict_round_trip_matches_lightning_keys():
    ours, theirs = EarlyStopping("val_loss"), LightningEarlyStopping("val_loss")
    for es in (ours, theirs):
        es.wait_count, es.stopped_epoch, es.best_score = 2, 5, torch.tensor(0.25)
    s_ours, s_theirs = ours.state_dict(), theirs.state_dict()
    assert set(s_theirs) <= set(s_ours)
    assert all(s_ours[k] == s_theirs[k] for k in s_theirs)
    # a Lightning checkpoint state loads into ours (weights absent: nothing to restore)
    fresh = EarlyStopping("val_loss")
    fresh.load_state_dict(s_theirs)
    assert fresh.wait_count == 2 and fresh.best_score.item() == 0.25 and fresh.best_epoch is None
