"""DDP (2 CPU processes, gloo): GradientMonitor + GradientClipping see the global gradient.

Run as ``python ddp_gradients.py OUT_DIR``; each rank writes ``rank{r}.pt`` with the norms it measured per
step, its adaptive clipping state and its final weights. ``run(devices=1, batch_size=16)`` is the
single-process reference on the full batch (imported by the test).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_reg import GradientClipping, GradientMonitor
from tests.helpers import end_process_group, fast_trainer

STEPS = 6


class Net(pl.LightningModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.head(self.body(x)), y)

    def train_dataloader(self) -> DataLoader:
        # Explicit unshuffled sampler (Lightning's automatic one shuffles training data): rank r gets the
        # samples r, r+2, ..., so per step the two ranks hold exactly the samples of one full-batch step.
        ds = dataset()
        sampler = DistributedSampler(ds, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    def __init__(self, monitor: GradientMonitor, clip: GradientClipping) -> None:
        self.monitor, self.clip = monitor, clip
        self.rows: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        row = {k: v.detach().clone() for k, v in self.monitor.last_metrics.items()}
        row.update({k: v.detach().clone() for k, v in self.clip.last_metrics.items()})
        self.rows.append(row)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * 16, 6, generator=g)
    return TensorDataset(x, x[:, :1] * 2 + 0.1 * torch.randn(STEPS * 16, 1, generator=g))


def run(devices: int, batch_size: int) -> dict[str, Any]:
    pl.seed_everything(0)
    model = Net(batch_size)
    monitor = GradientMonitor(log_every_n_steps=1)
    clip = GradientClipping("zclip", zclip_warmup_steps=1, zclip_z_thresh=1.0, log_every_n_steps=1)
    rec = Record(monitor, clip)
    trainer = fast_trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        use_distributed_sampler=False,
        callbacks=[monitor, clip, rec],
    )
    trainer.fit(model)
    return {
        "rank": trainer.global_rank,
        "rows": rec.rows,
        "zclip": clip.state_dict()["zclip"],
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    result = run(devices=2, batch_size=8)
    torch.save(result, out / f"rank{result['rank']}.pt")
    end_process_group()
