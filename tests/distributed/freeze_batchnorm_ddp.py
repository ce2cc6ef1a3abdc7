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
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg.batchnorm.callback import FreezeBatchNorm
from lightning_reg.penalties.callback import ProximalL1
from lightning_reg.penalties.functional import WeightPenalty
from lightning_reg.penalties.mixin import PenaltyMixin
from tests.helpers import BatchNormRecorder, conv_bn_net, end_process_group, fast_trainer


class Net(PenaltyMixin, BatchNormRecorder):
    def __init__(self) -> None:
        super().__init__(conv_bn_net())
        self.weight_penalty = WeightPenalty(l2=0.01)  # automatic: gradient added after the all-reduce


def main() -> None:
    out_dir, scenario = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(48, 2, 4, 4, generator=g) * 2 + 1, torch.randint(0, 3, (48,), generator=g))
    model = Net()
    epoch = 1
    trainer = fast_trainer(
        max_epochs=3,
        accelerator="cpu" if scenario == "bn" else "cuda",
        devices=2,
        strategy=DDPStrategy(broadcast_buffers=scenario != "bn"),
        sync_batchnorm=scenario == "syncbn",
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
    end_process_group()
