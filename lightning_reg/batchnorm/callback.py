"""Callback freezing BatchNorm layers from a given epoch on (see ``lightning_reg.batchnorm``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from typing_extensions import override

from lightning_reg._shared.names import NameSelector, strip_wrapper_prefixes
from lightning_reg._shared.validation import check_bool, check_int
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.batchnorm.functional import freeze_batchnorm, is_frozen_batchnorm

__all__ = ["FreezeBatchNorm"]

_warning_cache = WarningCache()


class FreezeBatchNorm(Callback):
    """Freeze every BatchNorm layer (running statistics, affine parameters, eval mode) from ``epoch`` on.

    At the start of training epoch ``epoch`` (0-based; also when a run resumes at or after it) the layers
    are frozen with [`freeze_batchnorm`][lightning_reg.batchnorm.functional.freeze_batchnorm]: they normalise
    with their running
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
        modules: which BatchNorm layers to freeze, as name selectors on the LightningModule's module
            names (dotted name or prefix, glob, ``re:<regex>``; e.g. ``["backbone"]`` freezes every layer
            under ``backbone``); ``None`` freezes every BatchNorm layer of the model.
        verbose: ``0`` quiet, ``1`` one line when freezing, ``2`` also the names of the frozen layers.

    Raises:
        TypeError: a value of the wrong type (e.g. ``modules="backbone"``: write ``["backbone"]``).
        ValueError: a negative ``epoch`` or an invalid pattern; at fit start, a model (or selection)
            without any BatchNorm layer, where the callback would silently do nothing.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[FreezeBatchNorm(epoch=2)], logger=False)
    """

    def __init__(
        self,
        epoch: int = 0,
        freeze_affine: bool = True,
        modules: Sequence[str] | None = None,
        verbose: int | bool = 1,
    ) -> None:
        self.epoch = check_int("epoch", epoch, low=0)
        self.freeze_affine = check_bool("freeze_affine", freeze_affine)
        self.selector = None if modules is None else NameSelector(modules, name="modules")
        self.modules = None if self.selector is None else list(self.selector.patterns)
        self.verbose = check_verbose(verbose)
        self.frozen = False
        self._drop_grads: list[nn.Parameter] = []
        self._stats: list[tuple[_BatchNorm, torch.Tensor | None, torch.Tensor | None, int | None]] = []
        self._swa = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            epoch=self.epoch, freeze_affine=self.freeze_affine, modules=self.modules
        )

    def _layers(self, pl_module: pl.LightningModule) -> list[tuple[str, _BatchNorm]]:
        """Return the selected BatchNorm layers with their (wrapper-stripped) names."""
        layers = [
            (strip_wrapper_prefixes(name), m)
            for name, m in pl_module.named_modules()
            if isinstance(m, _BatchNorm)
        ]
        if self.selector is not None:
            layers = [(n, m) for n, m in layers if self.selector.matches(n)]
        return layers

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # StochasticWeightAveraging recomputes BatchNorm statistics after training: frozen ones are kept
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        self._swa = any(isinstance(cb, StochasticWeightAveraging) for cb in callbacks)
        self.frozen = False  # a new fit starts fresh (a resumed one gets its state back after setup)
        self._drop_grads = []
        self._stats = []
        if self.selector is not None:
            names = [strip_wrapper_prefixes(n) for n, _ in pl_module.named_modules()]
            message = self.selector.unmatched_message(names, "module")
            if message:
                raise ValueError(f"FreezeBatchNorm on {type(pl_module).__name__}: {message}")
        if not self._layers(pl_module):
            where = "" if self.selector is None else f" under `modules`={self.modules}"
            raise ValueError(
                f"FreezeBatchNorm: {type(pl_module).__name__} has no BatchNorm layer{where} "
                "(BatchNorm1d/2d/3d, SyncBatchNorm), so there is nothing to freeze; remove the callback or "
                "check the model."
            )

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
        named = [(n, m) for n, m in self._layers(pl_module) if not is_frozen_batchnorm(m)]
        layers = [m for _, m in named]
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
        for layer in layers:
            freeze_batchnorm(layer, affine=self.freeze_affine and not keep_grad)
            tracked = layer.num_batches_tracked
            self._stats.append(
                (layer, layer.running_mean, layer.running_var, None if tracked is None else int(tracked))
            )
        if self.freeze_affine and not flat:
            self._drop_grads += [p for layer in layers for p in layer.parameters(recurse=False)]
        self.frozen = True
        epoch = trainer.current_epoch
        say(self.verbose, 1, f"FreezeBatchNorm: froze {len(layers)} BatchNorm layers at epoch {epoch}.")
        say(self.verbose, 2, "FreezeBatchNorm: " + ", ".join(n for n, _ in named))

    def _restore_frozen_stats(self) -> None:
        """Put back frozen statistics that someone replaced, without a host sync.

        ``StochasticWeightAveraging`` resets every BatchNorm before recomputing its statistics in train
        mode: new zeros / ones tensors for ``running_mean`` / ``running_var`` and ``num_batches_tracked``
        zeroed. Frozen layers stay in eval mode, so they would end with zeros and ones. A buffer moved to
        another device or dtype is left alone.
        """
        for layer, mean, var, tracked in self._stats:
            replaced = False
            for name, saved in (("running_mean", mean), ("running_var", var)):
                current = getattr(layer, name)
                if saved is None or current is None or current is saved:
                    continue
                if (current.device, current.dtype, current.shape) == (saved.device, saved.dtype, saved.shape):
                    setattr(layer, name, saved)
                    replaced = True
            if replaced and tracked is not None and layer.num_batches_tracked is not None:
                layer.num_batches_tracked.fill_(tracked)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._stats and self._swa:
            self._restore_frozen_stats()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stats and self._swa:
            self._restore_frozen_stats()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stats and self._swa:
            self._restore_frozen_stats()

    @staticmethod
    def _broadcast_running_stats(trainer: pl.Trainer, layers: list[_BatchNorm]) -> None:
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
