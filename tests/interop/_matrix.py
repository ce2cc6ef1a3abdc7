"""Models and helpers of the compatibility matrix (a module, so ``ddp_spawn`` can pickle them)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_reg import FreezeBatchNorm, GradientClipping, GradientMonitor
from tests.reliability._setup import Net, all_callbacks, train_loader, val_loader

__all__ = ["Backboned", "Manual", "PlainLogNet", "TunableNet", "ours", "plateau"]


def ours(**overrides: Any) -> list[Callback]:
    """Every callback of the library at once (the reliability suite's set, FreezeBatchNorm at epoch 1)."""
    cbs = all_callbacks()
    for i, cb in enumerate(cbs):
        if isinstance(cb, FreezeBatchNorm):
            cbs[i] = FreezeBatchNorm(epoch=overrides.get("freeze_epoch", 1))
        if isinstance(cb, GradientMonitor) and "group_by" in overrides:
            cbs[i] = GradientMonitor(log_every_n_steps=1, group_by=overrides["group_by"])
    if overrides.get("no_clipping"):
        cbs = [cb for cb in cbs if not isinstance(cb, GradientClipping)]
    return cbs


class TunableNet(Net):
    """``Net`` with its own data and a ``batch_size`` attribute (the Tuner's batch-size finder scales it)."""

    def __init__(self, batch_size: int = 8, **kw: Any) -> None:
        super().__init__(**kw)
        self.batch_size = batch_size

    def train_dataloader(self) -> Any:
        loader = train_loader(resumable=False)
        return torch.utils.data.DataLoader(loader.dataset, batch_size=self.batch_size)

    def val_dataloader(self) -> Any:
        return val_loader()


class Manual(TunableNet):
    """Manual optimization: one optimizer step per batch, gradients clipped with the callback's ``clip_``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(mixer=False, **kw)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True)
        return loss


class Backboned(TunableNet):
    """``Net`` whose stem and blocks form the ``backbone`` that ``BackboneFinetuning`` freezes, then frees."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(mixer=False, **kw)
        self.backbone = nn.Sequential(self.stem, self.blocks)
        del self.stem, self.blocks

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def plateau(**kw: Any) -> Any:
    return partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, **kw)


class PlainLogNet(TunableNet):
    """``TunableNet`` logging its training loss with ``self.log`` (no metric object: its Python counter
    would make ``torch.compile`` recompile every step, whatever the callbacks)."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.mixing_loss(self(x), y) if self.batch_mixer is not None else F.cross_entropy(self(x), y)
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True)
        return loss
