"""Recurrent layers' dropout between layers is a dropout site: scheduled, and the presets' stand-in for it.

The reference is the recurrent layer PyTorch builds with that dropout: the same weights, the same seed,
the same output, bit for bit.
"""

from __future__ import annotations

import copy
import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import StochasticDepthScheduler
from lightning_reg.presets import PresetStochasticDepth
from lightning_reg.stochastic_depth.layers import find_drop_rate_modules
from tests.helpers import fast_trainer

NOTE_LOGGER = "lightning.pytorch.utilities.rank_zero"


class Recurrent(L.LightningModule):
    """Token ids -> embedding -> a recurrent layer -> a linear head on the last step; no ``nn.Dropout``."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.rnn = rnn
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randint(0, 10, (16, 5), generator=g), torch.randint(0, 3, (16,), generator=g)),
        batch_size=4,
    )


class _MatchesBuiltWithDropout(L.Callback):
    """At every training batch, check the model's layer against a copy built by PyTorch with ``rate``."""

    def __init__(self, kind: type[nn.RNNBase], rate: float) -> None:
        self.kind, self.rate, self.checked, self.seen = kind, rate, 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rnn = pl_module.rnn
        self.seen.append(rnn.dropout)
        reference = self.kind(8, 8, num_layers=2, batch_first=True, dropout=self.rate)
        reference.load_state_dict(rnn.state_dict())
        x = torch.randn(4, 5, 8)
        torch.manual_seed(batch_idx)
        ours, _ = rnn(x)
        torch.manual_seed(batch_idx)
        theirs, _ = reference(x)
        assert torch.equal(ours, theirs)
        torch.manual_seed(batch_idx)
        assert not torch.equal(rnn(x)[0], reference.eval()(x)[0])  # the dropout is really on
        self.checked += 1


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_the_scheduler_sets_a_recurrent_layers_dropout_as_pytorch_would_build_it(kind) -> None:
    model = Recurrent(kind(8, 8, num_layers=2, batch_first=True, dropout=0.1))
    check = _MatchesBuiltWithDropout(kind, 0.3)
    sd = StochasticDepthScheduler(include_dropout=True, dropout_rate=0.3, verbose=0)
    fast_trainer(max_epochs=1, callbacks=[sd, check]).fit(model, _loader(), _loader())
    assert check.checked == 4 and check.seen == [0.3] * 4
    assert model.rnn.dropout == 0.1  # the model's own rate, back after the fit


def test_a_one_layer_recurrent_layer_has_no_dropout_site() -> None:
    # PyTorch applies a recurrent layer's dropout between its layers only: one layer has none to set
    model = nn.ModuleDict({"one": nn.LSTM(4, 4), "two": nn.LSTM(4, 4, num_layers=2)})
    assert [f.name for f in find_drop_rate_modules(model, include_dropout=True)] == ["two"]
    assert find_drop_rate_modules(model) == []  # not a drop-path module


def test_a_preset_gives_a_stacked_recurrent_model_the_dropout_stand_in(caplog) -> None:
    model = Recurrent(nn.GRU(8, 8, num_layers=2, batch_first=True))
    check = _MatchesBuiltWithDropout(nn.GRU, 0.3)
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="medium")
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd, check]).fit(model, _loader(), _loader())
    said = [r.getMessage() for r in caplog.records]
    assert any("1 dropout module stands in for drop-path, at rate 0.3" in m for m in said), said
    assert sd.dropout_instead and check.checked == 4 and model.rnn.dropout == 0.0


def test_a_one_layer_recurrent_model_is_still_skipped_with_its_note(caplog) -> None:
    model = Recurrent(nn.GRU(8, 8, batch_first=True))
    before = copy.deepcopy(model.state_dict())
    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="strong")
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(model, _loader(), _loader())
    assert sd.skipped and model.rnn.dropout == 0.0
    assert any("no residual block and no dropout module" in r.getMessage() for r in caplog.records)
    assert before.keys() == model.state_dict().keys()
