"""2-process CPU DDP run of OverfittingMonitor(action="stop"); started by tests/test_overfitting_monitor.py.

Two scenarios in one launch (Lightning re-executes this script for rank 1):
* ``synced``: ranks log different, unsynced validation losses; the monitor averages them (sync_values=True)
  and both ranks must stop at the epoch the *mean* crosses GL > 10.
* ``unsynced``: sync_values=False; only rank 1's own values cross GL > 30; the stop decision goes through
  ``reduce_boolean_decision`` so rank 0 must stop at the same epoch.
* ``probe``: eval-mode probe on the whole training set (``probe=1.0``), sharded across the ranks, with the
  module's validation_step (loss) and a torchmetrics accuracy; both ranks must see the full-set value.
Each rank writes ``<scenario>_rank<r>.pt`` with its history and final epoch.
"""

import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_reg import OverfittingMonitor
from tests.helpers import DropoutClassifier, end_process_group, fast_trainer, threshold_data

VAL = {  # per rank, per epoch
    0: [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    1: [1.0, 0.5, 0.5, 0.625, 0.75, 0.75, 0.75, 0.75],
}
VAL_UNSYNCED = {
    0: [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    1: [1.0, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75],
}


class RankScripted(L.LightningModule):
    def __init__(self, val):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.val = val

    def training_step(self, batch, batch_idx):
        # training keeps improving, so a rising validation loss is overfitting (the monitor's gate)
        self.log("train_loss", 0.125 / (1 + self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        # deliberately not synced: each rank sees its own value
        self.log("val_loss", self.val[self.global_rank][self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(out_dir: Path, name: str, val, **monitor_kw) -> None:
    monitor = OverfittingMonitor(
        {"loss": ("train_loss", "val_loss")}, action="stop", verbose=False, **monitor_kw
    )
    trainer = fast_trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=8, callbacks=[monitor])
    data = TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))
    trainer.fit(RankScripted(val), DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    torch.save(
        {
            "history": monitor.history,
            "current_epoch": trainer.current_epoch,
            "stopped_epoch": monitor.stopped_epoch,
            "world_size": trainer.world_size,
        },
        out_dir / f"{name}_rank{trainer.global_rank}.pt",
    )


def run_probe(out_dir: Path) -> None:
    monitor = OverfittingMonitor(
        {"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")},
        criteria={"gl": 5.0},
        probe=1.0,
        probe_metrics={"acc": MulticlassAccuracy(num_classes=3, average="micro")},
        verbose=False,
    )
    trainer = fast_trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[monitor])
    model = DropoutClassifier(sync_dist=True)
    # batch 4 over a 15-sample shard per rank: uneven last batches
    data = threshold_data(30, 0)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=5))
    torch.save(
        {"history": monitor.history, "state_dict": model.state_dict()},
        out_dir / f"probe_rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    run(out, "synced", VAL, criteria={"gl": 10.0})
    run(out, "unsynced", VAL_UNSYNCED, criteria={"gl": 30.0}, sync_values=False)
    run_probe(out)
    end_process_group()
