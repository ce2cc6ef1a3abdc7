"""One optimizer step's gradients, read once and shared by ``GradientMonitor`` and ``GradientClipping``.

Both callbacks need the gradients of the optimizer step about to happen, and usually the same per-tensor
norms. A ``SharedGradients`` instance, one per Trainer and fit, holds what this step has measured so
far, so the norms are computed once however many callbacks read them. It also holds the *pre-change
readers*: callbacks that must see the gradients before another callback changes them (the monitor
registers itself; the clipper calls ``SharedGradients.before_change`` before it clips), so the monitor
logs the pre-clip gradients whatever the order of the callbacks.

The callbacks find each other's instance through their public ``shared_gradients`` attribute: the first
to set up creates it, the others adopt it (``SharedGradients.join``), and each drops it at teardown,
so a new fit starts fresh. Nothing is kept at module level.

Example:
    >>> import lightning as L
    >>> class Reads(L.Callback):
    ...     shared_gradients = None
    ...     def setup(self, trainer, pl_module, stage):
    ...         self.shared_gradients = SharedGradients.join(trainer, self)
    >>> a, b = Reads(), Reads()
    >>> trainer = L.Trainer(callbacks=[a, b], logger=False, enable_checkpointing=False)
    >>> a.setup(trainer, None, "fit"); b.setup(trainer, None, "fit")
    >>> a.shared_gradients is b.shared_gradients
    True
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_reg.gradients.functional import ReduceFn, per_tensor_norms, reduce_norms

__all__ = ["SharedGradients", "StepGradients"]

#: A callback's hook that must see the gradients before they change: ``(trainer, pl_module, optimizer)``.
_Reader = Callable[[pl.Trainer, pl.LightningModule, torch.optim.Optimizer], object]


def _local(t: Tensor) -> Tensor:
    """Return the local shard of a DTensor (FSDP2 ``fully_shard``); in-place edits write through."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@dataclass(frozen=True)
class StepGradients:
    """The parameters of one optimizer step that have a gradient, their gradients and (maybe) norms.

    Args:
        params: the optimizer's parameters whose ``.grad`` is set, in param-group order.
        grads: their gradients (the local shard under FSDP2; in-place edits reach ``param.grad``).
        per_tensor: the norm of every gradient (local shard), or ``None`` when not asked for.
        total: the total norm over all gradients (reduced across shards), or ``None``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
        >>> step = StepGradients([p], [p.grad], None, None)
        >>> [tuple(w.shape) for w in step.local_weights()]
        [(2,)]
    """

    params: list[Tensor]
    grads: list[Tensor]
    per_tensor: Tensor | None
    total: Tensor | None

    def local_weights(self) -> list[Tensor]:
        """Return the parameters' values (local shards, detached), in the order of ``params``.

        Example:
            >>> StepGradients([], [], None, None).local_weights()
            []
        """
        return [_local(p.detach()) for p in self.params]


class SharedGradients:
    """Gradient norms of the current optimizer step for every callback of one Trainer, computed once.

    The cache holds only small norm tensors (never gradients, which ``zero_grad`` may free) and is keyed by
    the optimizer step (``trainer.global_step``, the optimizer) and ``norm_type``; a new step replaces it.

    Args:
        trainer: the Trainer whose steps are read.

    Example:
        >>> import lightning as L
        >>> shared = SharedGradients(L.Trainer(logger=False, enable_checkpointing=False))
        >>> shared.sharded
        False
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = weakref.ref(trainer)
        self._readers: dict[int, _Reader] = {}
        self._step: tuple[int, int] | None = None
        self._norms: dict[float, tuple[Tensor, Tensor]] = {}
        self._seen: dict[int, tuple[int, int]] = {}

    @classmethod
    def join(cls, trainer: pl.Trainer, callback: object, reader: _Reader | None = None) -> SharedGradients:
        """Return the instance another callback of ``trainer`` holds as ``shared_gradients``, or a new one.

        Args:
            trainer: the Trainer being set up.
            callback: the callback that joins (its own, older instance is never adopted).
            reader: a hook of ``callback`` that must see the gradients before any callback changes them.

        Example:
            >>> import lightning as L
            >>> trainer = L.Trainer(logger=False, enable_checkpointing=False)
            >>> a = SharedGradients.join(trainer, object())
            >>> a is SharedGradients.join(trainer, object())  # no callback of the trainer holds `a`
            False
        """
        callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        shared = next(
            (
                held
                for cb in callbacks
                if cb is not callback
                and isinstance(held := getattr(cb, "shared_gradients", None), SharedGradients)
                and held.trainer is trainer
            ),
            None,
        )
        shared = cls(trainer) if shared is None else shared
        if reader is not None:
            shared._readers[id(callback)] = reader
        return shared

    @property
    def trainer(self) -> pl.Trainer | None:
        """The Trainer (``None`` once it is garbage-collected)."""
        return self._trainer()

    @property
    def sharded(self) -> bool:
        """Whether gradients are sharded across ranks (FSDP, ModelParallel): norms need an all-reduce."""
        return isinstance(getattr(self.trainer, "strategy", None), (FSDPStrategy, ModelParallelStrategy))

    def check_strategy(self, name: str) -> None:
        """Refuse strategies whose gradients a callback cannot read (DeepSpeed keeps no full ``.grad``).

        Args:
            name: the callback's name, for the message.

        Raises:
            MisconfigurationException: under ``DeepSpeedStrategy``.

        Example:
            >>> import lightning as L
            >>> SharedGradients(L.Trainer(logger=False)).check_strategy("GradientMonitor")
        """
        if isinstance(getattr(self.trainer, "strategy", None), DeepSpeedStrategy):
            raise MisconfigurationException(
                f"`{name}` does not support `DeepSpeedStrategy`: DeepSpeed partitions and clips gradients"
                " inside its engine (ZeRO stages 1-3 keep no full `param.grad`). Use DeepSpeed's own"
                " `gradient_clipping` config and its logged global norm instead. Supported strategies:"
                " single device, DDP, FSDP, ModelParallel."
            )

    def reduce_fn(self, norm_type: float) -> ReduceFn | None:
        """All-reduce of powered norms across shards (max for ``inf``); ``None`` where gradients are whole.

        Args:
            norm_type: the p of the norms to reduce.

        Example:
            >>> import lightning as L
            >>> SharedGradients(L.Trainer(logger=False)).reduce_fn(2.0) is None
            True
        """
        trainer = self.trainer
        if trainer is None or not self.sharded:
            return None
        op = "max" if math.isinf(norm_type) else "sum"  # Lightning maps the name to ``ReduceOp``
        strategy = trainer.strategy

        def reduce(t: Tensor) -> Tensor:
            return strategy.reduce(t, reduce_op=op)

        return reduce

    def first_call(self, owner: object, optimizer: torch.optim.Optimizer) -> bool:
        """Return ``True`` the first time ``owner`` asks during this optimizer step (to act once per step).

        Args:
            owner: the callback asking.
            optimizer: the optimizer about to step.

        Example:
            >>> import lightning as L
            >>> shared, opt = SharedGradients(L.Trainer(logger=False)), torch.optim.SGD([torch.zeros(1)])
            >>> shared.first_call("clip", opt), shared.first_call("clip", opt)
            (True, False)
        """
        step = self._step_key(optimizer)
        if self._seen.get(id(owner)) == step:
            return False
        self._seen[id(owner)] = step
        return True

    def before_change(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Let every pre-change reader see this step's gradients before the caller changes them.

        Readers act once per step (a reader that already ran this step does nothing the second time).

        Args:
            trainer: the Trainer.
            pl_module: the module.
            optimizer: the optimizer about to step.
        """
        for reader in self._readers.values():
            reader(trainer, pl_module, optimizer)

    def gradients(self, optimizer: torch.optim.Optimizer) -> StepGradients:
        """Return the parameters with a gradient and their (local) gradients, without norms.

        Args:
            optimizer: the optimizer about to step.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return StepGradients(params, [_local(p.grad) for p in params], None, None)

    def read(self, optimizer: torch.optim.Optimizer, norm_type: float) -> StepGradients:
        """Return the gradients with their per-tensor and total ``norm_type`` norms, computed once per step.

        Args:
            optimizer: the optimizer about to step.
            norm_type: the p of the norms (a float, see ``check_norm_type``).
        """
        plain = self.gradients(optimizer)
        step = self._step_key(optimizer)
        if step != self._step:
            self._step, self._norms = step, {}
        cached = self._norms.get(norm_type)
        if cached is None or cached[0].numel() != len(plain.params):
            grads = plain.grads
            device = grads[0].device if grads else torch.device("cpu")
            per = per_tensor_norms(grads, norm_type, device) if grads else torch.zeros(0)
            total, _ = reduce_norms(per, norm_type, reduce_fn=self.reduce_fn(norm_type))
            cached = self._norms[norm_type] = (per, total)
        return StepGradients(plain.params, plain.grads, *cached)

    def _step_key(self, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
        trainer: Any = self.trainer
        return (-1 if trainer is None else trainer.global_step, id(optimizer))
