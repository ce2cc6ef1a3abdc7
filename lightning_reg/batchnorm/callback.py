"""Callback freezing BatchNorm layers from a given epoch on (see :mod:`lightning_reg.batchnorm`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_reg.batchnorm.core import batchnorm_layers, freeze_batchnorm, is_frozen_batchnorm

__all__ = ["FreezeBatchNorm"]

_warning_cache = WarningCache()


class FreezeBatchNorm(Callback):
    """Freeze every BatchNorm layer (running statistics, affine parameters, eval mode) from ``epoch`` on.

    At the start of training epoch ``epoch`` (0-based; also when a run resumes at or after it) the layers
    are frozen with :func:`~lightning_reg.batchnorm.freeze_batchnorm`: they normalise with their running
    statistics, stop updating them, and stay in eval mode through Lightning's ``model.train()`` calls.
    With ``freeze_affine=True`` their ``weight``/``bias`` get no optimizer update from then on, also none
    from weight decay or momentum: on one device they stop requiring gradients; under DDP (whose reducer
    expects a gradient for every parameter that required one when the model was wrapped) they keep
    ``requires_grad`` and their all-reduced gradients are set to ``None`` in ``on_before_optimizer_step``,
    which PyTorch optimizers skip. Under multi-process training the running statistics are broadcast from
    rank 0 when freezing (plain BatchNorm with ``broadcast_buffers=False`` would otherwise leave each rank
    with its own statistics); ``SyncBatchNorm`` in eval mode does no collective. Under FSDP and
    DeepSpeed, which flatten parameters, only the statistics and the eval mode are frozen (a warning says
    so); keep BatchNorm parameters out of the optimizer there.

    Args:
        epoch: first (0-based) epoch trained with frozen BatchNorm; 0 freezes from the start.
        freeze_affine: also stop updating the affine parameters.
        modules: names of submodules of the LightningModule to freeze in (e.g. ``["backbone"]``);
            ``None`` freezes every BatchNorm layer of the model.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[FreezeBatchNorm(epoch=2)], logger=False)
    """

    def __init__(
        self, epoch: int = 0, freeze_affine: bool = True, modules: Sequence[str] | None = None
    ) -> None:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch={epoch!r} must be an int >= 0 (the first epoch with frozen BatchNorm).")
        if modules is not None and (isinstance(modules, str) or not all(isinstance(m, str) for m in modules)):
            raise ValueError(f"modules={modules!r} must be None or a list of submodule names.")
        self.epoch = epoch
        self.freeze_affine = freeze_affine
        self.modules = None if modules is None else list(modules)
        self.frozen = False
        self._drop_grads: list[nn.Parameter] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            epoch=self.epoch, freeze_affine=self.freeze_affine, modules=self.modules
        )

    def _roots(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        if self.modules is None:
            return [pl_module]
        return [pl_module.get_submodule(name) for name in self.modules]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed from a mid-epoch checkpoint gets no ``on_train_epoch_start`` for that epoch.
        self._freeze_if_due(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._freeze_if_due(trainer, pl_module)

    def _freeze_if_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.epoch:
            return
        roots = self._roots(pl_module)
        layers = [
            layer for root in roots for layer in batchnorm_layers(root) if not is_frozen_batchnorm(layer)
        ]
        if not layers:
            self.frozen = True
            return
        if trainer.world_size > 1:
            self._broadcast_running_stats(trainer, layers)
        strategy = trainer.strategy
        flat = isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy))
        if self.freeze_affine and flat:
            _warning_cache.warn(
                f"FreezeBatchNorm: under {type(strategy).__name__} only running statistics and eval mode "
                "are frozen; keep BatchNorm parameters out of the optimizer to freeze their affine weights."
            )
        # Under DDP the affine parameters must keep requires_grad (the reducer waits for their gradients):
        # their gradients are dropped before each optimizer step instead.
        keep_grad = isinstance(strategy, DDPStrategy) or flat
        for root in roots:
            freeze_batchnorm(root, affine=self.freeze_affine and not keep_grad)
        if self.freeze_affine and not flat:
            self._drop_grads = [p for layer in layers for p in layer.parameters(recurse=False)]
        self.frozen = True
        rank_zero_info(
            f"FreezeBatchNorm: froze {len(layers)} BatchNorm layers at epoch {trainer.current_epoch}."
        )

    @staticmethod
    def _broadcast_running_stats(trainer: pl.Trainer, layers: list[nn.Module]) -> None:
        buffers = [b for layer in layers for b in (layer.running_mean, layer.running_var) if b is not None]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).float().cpu() for b in buffers])
        flat = trainer.strategy.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        for p in self._drop_grads:
            p.grad = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "frozen": self.frozen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Freezing is re-applied from ``trainer.current_epoch`` at the next epoch start; the flag is kept
        # for inspection.
        self.frozen = bool(state_dict.get("frozen", False))
