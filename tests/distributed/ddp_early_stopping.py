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
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_reg import EarlyStopping
from tests.helpers import ScaledRegression, ValidationRecorder, end_process_group, fast_trainer


class Model(ScaledRegression):
    def __init__(self, sync_dist: bool) -> None:
        super().__init__(n_train=128, n_val=64)
        self.sync_dist = sync_dist

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # rank 1 sees a shifted loss so the local values differ clearly between ranks
        loss = nn.functional.mse_loss(self.net(x), y) * (1.0 + self.global_rank)
        self.log("val_loss", loss, sync_dist=self.sync_dist)


def run(out: Path, scenario: str) -> None:
    L.seed_everything(0)
    sync = scenario == "checkpoint"
    model, rec = Model(sync_dist=sync), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=2, snapshot="checkpoint" if sync else "cpu")
    callbacks = [rec, es]
    if sync:
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", monitor="val_loss", save_top_k=1))
    trainer = fast_trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=10,
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
    end_process_group()
