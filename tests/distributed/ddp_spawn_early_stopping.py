"""Standalone ``ddp_spawn`` run (2 CPU processes, gloo) for tests/early_stopping/test_distributed.py.

Usage: python ddp_spawn_early_stopping.py OUT_DIR

The ranks log different local validation losses (``sync_dist=False``). Each worker writes
``worker_rank{r}.pt`` (its validation values, its weights after every validation, and its callback's
results); the launching process writes ``main.pt`` with what *its* callback object and model hold after
``fit`` returned, which is what a user of ``ddp_spawn`` sees.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_reg import EarlyStopping
from tests.distributed.ddp_early_stopping import Model
from tests.distributed.launch import DestroyProcessGroup
from tests.helpers import ValidationRecorder, fast_trainer


class FileRecorder(ValidationRecorder):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def on_train_end(self, trainer, pl_module):
        (es,) = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
        torch.save(
            {
                "records": self.records,
                "best_epoch": es.best_epoch,
                "best_step": es.best_step,
                "best_score": es.best_score.cpu(),
                "stopped_epoch": es.stopped_epoch,
            },
            self.out / f"worker_rank{trainer.global_rank}.pt",
        )


def main(out: Path) -> None:
    L.seed_everything(0)
    model = Model(sync_dist=False)
    es = EarlyStopping("val_loss", patience=2, verbose=0)
    trainer = fast_trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=10,
        callbacks=[FileRecorder(out), es, DestroyProcessGroup()],
    )
    trainer.fit(model)
    torch.save(
        {
            "best_epoch": es.best_epoch,
            "best_step": es.best_step,
            "best_score": es.best_score,
            "stopped_epoch": es.stopped_epoch,
            "stopping_reason": es.stopping_reason.value,
            "restored": es.restored,
            "final": copy.deepcopy(model.state_dict()),
            "callback_metrics": {k: v.item() for k, v in trainer.callback_metrics.items()},
        },
        out / "main.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
