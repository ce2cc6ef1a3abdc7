"""DDP (2 processes) run of FreezeBatchNorm + ProximalL1 + PenaltyMixin; each rank writes to ``out_dir``.

Usage: ``freeze_batchnorm_ddp.py OUT_DIR SCENARIO`` with SCENARIO one of
``bn`` (CPU, plain BatchNorm2d, ``broadcast_buffers=False`` so the ranks' running statistics differ before
the freeze) or ``syncbn`` (2 CUDA devices, ``Trainer(sync_batchnorm=True)``; DDP refuses SyncBatchNorm in
CPU modules). Both freeze at epoch 1, apply ProximalL1(l1=0.5) and an automatic L2 penalty to the conv and
linear weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg.batchnorm.callback import FreezeBatchNorm
from lightning_reg.penalties.callback import ProximalL1
from lightning_reg.penalties.functional import WeightPenalty
from lightning_reg.penalties.mixin import PenaltyMixin


class Net(PenaltyMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
        )
        self.weight_penalty = WeightPenalty(l2=0.01)  # automatic: gradient added after the all-reduce
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.bn_training: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.bn_training.append(self.net[1].training)
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def on_train_epoch_end(self) -> None:
        self.snapshots[self.current_epoch] = {
            k: v.detach().cpu().clone() for k, v in self.state_dict().items()
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)


def main() -> None:
    out_dir, scenario = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(48, 2, 4, 4, generator=g) * 2 + 1, torch.randint(0, 3, (48,), generator=g))
    model = Net()
    epoch = 1
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu" if scenario == "bn" else "cuda",
        devices=2,
        strategy=DDPStrategy(broadcast_buffers=scenario != "bn"),
        sync_batchnorm=scenario == "syncbn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[FreezeBatchNorm(epoch=epoch), ProximalL1(l1=0.5)],
        log_every_n_steps=1,
        default_root_dir=out_dir,
    )
    trainer.fit(model, DataLoader(ds, batch_size=8))
    result = {
        "final": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "epoch0": model.snapshots[0],
        "bn_training": model.bn_training,
        "bn_type": type(model.net[1]).__name__,
        "zero_fraction": float(trainer.callback_metrics["proximal_l1/zero_fraction"]),
        "penalty": float(trainer.callback_metrics["penalty/value"]),
    }
    torch.save(result, out_dir / f"{scenario}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
