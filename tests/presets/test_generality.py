"""The presets' rules for settings nobody tuned: what early stopping follows, for how long, and what a
model without residual blocks gets in place of drop-path."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import get_preset, preset_callbacks
from lightning_reg.presets import PresetEarlyStopping, PresetStochasticDepth
from lightning_reg.presets.callbacks import planned_validation_checks
from lightning_reg.presets.registry import Preset
from tests.helpers import fast_trainer

NOTE_LOGGER = "lightning.pytorch.utilities.rank_zero"


def _loader(n: int = 40, batch: int = 4, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)),
        batch_size=batch,
        shuffle=shuffle,
    )


class Flat(L.LightningModule):
    """Logs a constant ``val_acc`` (never improves after the first check) and ``val_loss``."""

    def __init__(self, body: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body or nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_acc", 0.5, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_acc", 0.5)
        self.log("val_loss", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Read(Exception):
    pass


class Planned(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.planned = planned_validation_checks(trainer)
        raise _Read  # read it and stop: nothing else to run


def _planned(train_batches: int = 10, **trainer_args) -> int | None:
    cb = Planned()
    trainer = fast_trainer(callbacks=[cb], **trainer_args)
    with pytest.raises(_Read):
        trainer.fit(Flat(), _loader(4 * train_batches), _loader(8))
    return cb.planned


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"max_epochs": 40}, 40),  # one check per epoch
        ({"max_epochs": 40, "check_val_every_n_epoch": 3}, 13),  # epochs 3, 6, ..., 39
        ({"max_epochs": 8, "val_check_interval": 0.5}, 16),  # twice per epoch of 10 batches
        ({"max_epochs": -1, "max_steps": 25}, 2),  # 25 steps of 10-batch epochs: two whole epochs
        ({"max_epochs": 100, "max_steps": 30}, 3),  # the step limit ends it first
        ({"max_epochs": -1, "max_steps": 50, "check_val_every_n_epoch": None, "val_check_interval": 5}, 10),
        (
            {"max_epochs": 4, "max_steps": 40, "accumulate_grad_batches": 2},
            4,
        ),  # 40 steps = 80 batches > 4 epochs
    ],
)
def test_planned_checks_count_what_the_trainer_will_run(args, expected):
    assert _planned(**args) == expected


def test_planned_checks_of_a_trainer_without_an_end_are_none():
    assert _planned(max_epochs=-1) is None


def test_patience_fraction_stops_a_run_that_never_improves_after_that_share_of_checks(caplog):
    # 40 planned checks x 0.1 = 4: the first check sets the best, four more without improvement stop it
    es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.1, verbose=1)
    trainer = fast_trainer(max_epochs=40, callbacks=[es])
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        trainer.fit(Flat(), _loader(), _loader(8))
    assert es.patience == 4
    assert trainer.current_epoch == 5  # epochs 0..4 ran
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("EarlyStopping: val_acc (max), patience 4 (0.1 of the 40 planned checks);")
               for m in said), said
    # a run twice as long waits twice as many checks
    es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.1, verbose=0)
    trainer = fast_trainer(max_epochs=80, callbacks=[es])
    trainer.fit(Flat(), _loader(), _loader(8))
    assert (es.patience, trainer.current_epoch) == (8, 9)


@pytest.mark.parametrize(("epochs", "expected"), [(12, 3), (5, 3), (2, 2), (1, 1)])
def test_a_fractional_patience_waits_at_least_three_checks_or_the_whole_run(epochs, expected):
    # 0.25 of 12 checks is 3; of 5 it would be 1 (one check without improvement ends the run): 3 instead,
    # as Lightning's default patience; a run shorter than that waits all of its checks
    es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.25, verbose=0)
    trainer = fast_trainer(max_epochs=epochs, callbacks=[es])
    trainer.fit(Flat(), _loader(), _loader(8))
    assert es.patience == expected
    assert trainer.current_epoch == min(epochs, 1 + expected)  # Flat never improves after its first check


def test_patience_fraction_without_a_planned_end_is_refused_naming_the_fix():
    es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.25, verbose=0)
    trainer = fast_trainer(max_epochs=-1, callbacks=[es])
    with pytest.raises(ValueError, match=r"max_epochs or max_steps.*int patience"):
        trainer.fit(Flat(), _loader(), _loader(8))


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_patience_fraction_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="patience_fraction"):
        PresetEarlyStopping("val_acc", mode="max", patience_fraction=bad)
    with pytest.raises(ValueError, match=r"fraction of the planned validation checks, in \(0, 1\)"):
        Preset("x", patience=bad if bad != 0.0 else 1.0)


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None):
        es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.1, verbose=0)
        saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        trainer = fast_trainer(max_epochs=40, callbacks=[es, saver], enable_checkpointing=True)
        trainer.fit(Flat(), _loader(), _loader(8), ckpt_path=ckpt_path)
        return es, trainer

    es_full, full = run()
    es_b, second = run(tmp_path / "epoch=2.ckpt")  # resumed after three of the five epochs
    assert (second.current_epoch, es_b.stopped_epoch, es_b.patience, es_b.wait_count) == (
        full.current_epoch,
        es_full.stopped_epoch,
        es_full.patience,
        es_full.wait_count,
    )


def test_with_num_classes_early_stopping_and_the_restore_follow_the_validation_accuracy():
    cbs = preset_callbacks("medium", num_classes=10)
    es = next(cb for cb in cbs if isinstance(cb, PresetEarlyStopping))
    assert (es.monitor, es.mode, es.restore_best_weights) == ("val_acc", "max", True)
    monitor = next(cb for cb in cbs if type(cb).__name__ == "OverfittingMonitor")
    assert monitor.pairs == {"acc": ("train_acc", "val_acc", "max")}
    # an explicit monitor wins; without num_classes the loss is followed as before
    es = next(
        cb
        for cb in preset_callbacks("medium", num_classes=10, monitor="val_loss")
        if isinstance(cb, PresetEarlyStopping)
    )
    assert (es.monitor, es.mode) == ("val_loss", "min")
    es = next(cb for cb in preset_callbacks("medium") if isinstance(cb, PresetEarlyStopping))
    assert (es.monitor, es.mode) == ("val_loss", "min")
    with pytest.raises(ValueError, match="num_classes"):
        preset_callbacks("medium", num_classes=1)


def test_named_presets_scale_their_patience_with_the_run():
    for name in ("mild", "medium", "strong"):
        p = get_preset(name)
        assert isinstance(p.patience, float) and 0 < p.patience < 1, (name, p.patience)
        es = next(cb for cb in preset_callbacks(name) if isinstance(cb, PresetEarlyStopping))
        assert es.patience_fraction == p.patience


class _Rates(L.Callback):
    """Records the dropout rates the model trains with at every step (after the scheduler wrote them)."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append([m.p for m in pl_module.modules() if isinstance(m, nn.Dropout)])


def test_a_model_without_residual_blocks_gets_its_dropout_set_to_the_stand_in_rate(caplog):
    model = Flat(
        nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 3)
        )
    )
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="p")
    rates = _Rates()
    trainer = fast_trainer(max_epochs=2, callbacks=[sd, rates])  # the recorder runs after the scheduler
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        trainer.fit(model, _loader(), _loader(8))
    assert rates.rates and all(r == [0.3, 0.3] for r in rates.rates)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.0, 0.1]  # the model's own, back
    said = [r.getMessage() for r in caplog.records]
    assert any("2 dropout modules stand in for drop-path, at rate 0.3" in m for m in said), said


def test_the_stand_in_follows_the_warmup_schedule():
    model = Flat()
    sd = PresetStochasticDepth(0.2, schedule="warmup", warmup=0.5, dropout_rate=0.4, verbose=0)
    rates = _Rates()
    trainer = fast_trainer(max_epochs=2, callbacks=[sd, rates])  # 20 steps; warm-up over the first 10
    trainer.fit(model, _loader(), _loader(8))
    seen = [r[0] for r in rates.rates]
    assert seen[0] < seen[5] < seen[9] and seen[-1] == pytest.approx(0.4)
    assert all(a <= b + 1e-12 for a, b in zip(seen, seen[1:]))


def test_a_residual_model_keeps_its_dropout_and_gets_drop_path():
    from torchvision.models.resnet import BasicBlock

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = BasicBlock(8, 8)
            self.drop = nn.Dropout(0.1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.drop(self.block(self.stem(x)).mean((2, 3))))

    x = torch.randn(16, 3, 6, 6)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (16,))), batch_size=4)
    model = Flat(Res())
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, verbose=0)
    rates = _Rates()
    fast_trainer(max_epochs=1, callbacks=[sd, rates]).fit(model, loader, loader)
    assert not sd.dropout_instead and all(r == [0.1] for r in rates.rates)
    assert sum(type(m).__name__ == "DropPath" for m in model.modules()) == 1  # inserted into the block


def test_a_model_with_neither_is_skipped_with_one_note_naming_both(caplog):
    model = Flat(nn.Sequential(nn.Linear(6, 3)))
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="strong")
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(model, _loader(), _loader(8))
    notes = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(
        "preset 'strong': drop-path and its dropout stand-in skipped (no residual block and no dropout module"
    )
    assert sd.skipped


def test_a_preset_with_the_stand_in_only_leaves_a_residual_model_alone(caplog):
    from torchvision.models.resnet import BasicBlock

    model = Flat(nn.Sequential(nn.Unflatten(1, (6, 1, 1)), BasicBlock(6, 6), nn.Flatten(), nn.Linear(6, 3)))
    cbs = preset_callbacks(get_preset("mild", drop_path_rate=0.0, dropout_rate=0.2), verbose=1)
    sd = next(cb for cb in cbs if isinstance(cb, PresetStochasticDepth))
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(model, _loader(), _loader(8))
    assert sd.skipped and not any(type(m).__name__ == "DropPath" for m in model.modules())
    assert any("drop-path skipped (rate 0 for Flat)" in r.getMessage() for r in caplog.records)


def test_a_classifier_preset_whose_module_logs_no_val_acc_names_num_classes_as_the_cause():
    class LossOnly(Flat):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 1.0)

    cbs = preset_callbacks("mild", num_classes=3, verbose=0)
    match = r"follows 'val_acc' \(with `num_classes`, the presets follow the valid"
    trainer = fast_trainer(max_epochs=2, callbacks=cbs, num_sanity_val_steps=1)
    with pytest.raises(Exception, match=match) as err:
        trainer.fit(LossOnly(), _loader(), _loader(8))
    assert trainer.global_step == 0  # said at the sanity check, before any training
    assert "Logged keys: ['val_loss']" in str(err.value)
    assert "monitor=<a logged key>" in str(err.value)
    # the same module is fine when early stopping follows what it logs
    fast_trainer(max_epochs=1, callbacks=preset_callbacks("mild", monitor="val_loss", verbose=0)).fit(
        LossOnly(), _loader(), _loader(8)
    )


def test_one_dropout_module_is_said_in_the_singular(caplog):
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="p")
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(Flat(), _loader(), _loader(8))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "so its 1 dropout module stands in for drop-path, at rate 0.3" in said
    assert "1 dropout module, max target 0.3;" in said


def test_the_line_says_when_the_fraction_was_raised_to_the_minimum(caplog):
    es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.25, verbose=1)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=5, callbacks=[es]).fit(Flat(), _loader(), _loader(8))
    said = [r.getMessage() for r in caplog.records]
    expected = (
        "EarlyStopping: val_acc (max), patience 3 (0.25 of the 5 planned checks, raised to at least 3, or all"
        " checks if fewer);"
    )
    assert any(m.startswith(expected) for m in said), said
