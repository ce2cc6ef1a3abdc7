"""Standalone DDP run (2 CPU processes, gloo) for tests/test_early_stopping_ddp.py.

Usage: python ddp_early_stopping.py OUT_DIR

Scenario "unsynced": every rank logs its own local validation loss (``sync_dist=False``), so the ranks see
different values; the callback must agree on one best score and epoch, restore the same weights, and say
once which value it uses.
Scenario "checkpoint": ``snapshot="checkpoint"`` with a ModelCheckpoint and a synced metric.
Each rank writes ``{scenario}_rank{r}.pt`` with what it saw, the warnings it issued and the lines it said.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import EarlyStopping

SCALES = [3.0, 2.0, 1.2, 1.0, 1.6, 2.4, 3.2, 4.0, 5.0, 6.0]


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]])


class Model(L.LightningModule):
    def __init__(self, sync_dist: bool) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y * SCALES[self.current_epoch])

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # rank 1 sees a shifted loss so the local values differ clearly between ranks
        loss = nn.functional.mse_loss(self.net(x), y) * (1.0 + self.global_rank)
        self.log("val_loss", loss, sync_dist=self.sync_dist)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.03)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*_data(128, 0)), batch_size=16)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*_data(64, 1)), batch_size=16)


class Recorder(Callback):
    def __init__(self) -> None:
        self.records = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            value = trainer.callback_metrics["val_loss"].item()
            self.records.append((trainer.current_epoch, value, copy.deepcopy(pl_module.state_dict())))


def run(out: Path, scenario: str) -> None:
    L.seed_everything(0)
    sync = scenario == "checkpoint"
    model, rec = Model(sync_dist=sync), Recorder()
    es = EarlyStopping("val_loss", patience=2, snapshot="checkpoint" if sync else "cpu")
    callbacks = [rec, es]
    if sync:
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", monitor="val_loss", save_top_k=1))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=10,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=sync,
        default_root_dir=str(out),
        callbacks=callbacks,
    )
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(handler)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(handler)
    torch.save(
        {
            "records": rec.records,
            "best_score": es.best_score.cpu(),
            "best_epoch": es.best_epoch,
            "best_step": es.best_step,
            "stopped_epoch": es.stopped_epoch,
            "restored": es.restored,
            "final": copy.deepcopy(model.state_dict()),
            "warnings": [str(w.message) for w in record if str(w.message).startswith("EarlyStopping")],
            "said": [line for line in said if line.startswith("EarlyStopping")],
        },
        out / f"{scenario}_rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    for name in ("unsynced", "checkpoint"):
        run(out_dir, name)
