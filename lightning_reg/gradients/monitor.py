"""``GradientMonitor``: fused, sync-free gradient-norm logging over :mod:`lightning_reg.gradients`."""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_reg.gradients.core import (
    ParamGrouping,
    ReduceFn,
    group_by_module_depth,
    group_by_param_groups,
    group_by_regex,
    nonfinite_count,
    per_tensor_norms,
    reduce_norms,
)

__all__ = ["GradientMonitor"]

_GROUP_BY = ("module", "param_groups", "regex")


# ---------------------------------------------------------------------------------------------------------
# Shared per-step reading of gradients (used by GradientMonitor and GradientClipping)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _StepGrads:
    key: tuple[int, int, float]
    params: list[Tensor]
    grads: list[Tensor]
    per_tensor: Tensor
    total: Tensor


_STEP_CACHE: weakref.WeakKeyDictionary[Any, _StepGrads] = weakref.WeakKeyDictionary()


def _step_key(
    trainer: pl.Trainer, optimizer: torch.optim.Optimizer, norm_type: float
) -> tuple[int, int, float]:
    return (trainer.global_step, id(optimizer), float(norm_type))


def _params_with_grad(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _local(t: Tensor) -> Tensor:
    """Return the local shard of a DTensor gradient (FSDP2 ``fully_shard``); in-place edits write through."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _is_sharded(trainer: pl.Trainer) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def _check_strategy(trainer: pl.Trainer, name: str) -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy):
        raise MisconfigurationException(
            f"`{name}` does not support `DeepSpeedStrategy`: DeepSpeed partitions and clips gradients"
            " inside its engine (ZeRO stages 1-3 keep no full `param.grad`). Use DeepSpeed's own"
            " `gradient_clipping` config and its logged global norm instead. Supported strategies: single"
            " device, DDP, FSDP, ModelParallel."
        )


def _reduce_fn(trainer: pl.Trainer, norm_type: float) -> ReduceFn | None:
    """All-reduce of powered norms across shards (FSDP/FSDP2); ``None`` where gradients are replicated."""
    if not _is_sharded(trainer):
        return None
    op = torch.distributed.ReduceOp.MAX if math.isinf(norm_type) else "sum"

    def reduce(t: Tensor) -> Tensor:
        return trainer.strategy.reduce(t, reduce_op=op)

    return reduce


def _read_step_grads(
    trainer: pl.Trainer, optimizer: torch.optim.Optimizer, norm_type: float
) -> tuple[_StepGrads, bool]:
    """Per-tensor and total norms of this optimizer step, computed once and shared; ``(step, fresh)``."""
    key = _step_key(trainer, optimizer, norm_type)
    params = _params_with_grad(optimizer)
    grads = [_local(p.grad) for p in params]
    cached = _STEP_CACHE.get(trainer)
    if cached is not None and cached.key == key and cached.per_tensor.numel() == len(params):
        return _StepGrads(key, params, grads, cached.per_tensor, cached.total), False
    device = grads[0].device if grads else torch.device("cpu")
    per = per_tensor_norms(grads, norm_type, device) if grads else torch.zeros(0)
    total, _ = reduce_norms(per, norm_type, reduce_fn=_reduce_fn(trainer, norm_type))
    # The cache keeps only the small norm tensors (not the gradients, which zero_grad may free).
    _STEP_CACHE[trainer] = _StepGrads(key, [], [], per, total)
    return _StepGrads(key, params, grads, per, total), True


def _log_every(trainer: pl.Trainer, n: int | None) -> int:
    return n if n is not None else max(1, int(trainer.log_every_n_steps))


def _is_logging_step(trainer: pl.Trainer, n: int | None) -> bool:
    return (trainer.global_step + 1) % _log_every(trainer, n) == 0


def _write_to_loggers(trainer: pl.Trainer, metrics: dict[str, Tensor]) -> None:
    """Write tensors straight to the loggers (cheapest path, see DESIGN.md; loggers are rank-zero-only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


class GradientMonitor(Callback):
    """Log total, per-group and (optionally) grad/weight norms every ``log_every_n_steps`` optimizer steps.

    Gradients are read in ``on_before_optimizer_step``: after AMP unscaling, after DDP's all-reduce and once
    per optimizer step under gradient accumulation. One ``torch._foreach_norm`` pass per device/dtype bucket
    gives all per-tensor norms; per-group and total norms are on-device index/sum ops; nothing is synchronised
    with the host and nothing is computed on steps that do not log. Metrics are written as tensors straight to
    ``trainer.loggers`` (rank zero) and kept in :attr:`last_metrics`.

    Logged keys (``prefix`` defaults to ``"grad"``): ``grad/norm_total``, ``grad/norm/<group>``,
    ``grad/ratio/<group>`` (``||g|| / ||w||``, if ``log_ratios``), ``grad/nonfinite_count`` and
    ``grad/max_abs``. With :class:`~lightning_reg.GradientClipping` also present, the norms are the
    pre-clip norms and gradients are read only once per step (the two callbacks share the computation).

    Under FSDP/ModelParallel (sharded gradients) the total and group norms are the p-th root of the
    all-reduced sum of local ``|g|^p`` (one collective). DeepSpeed is not supported (clear error at setup).

    Args:
        log_every_n_steps: log every N optimizer steps (default: the Trainer's ``log_every_n_steps``).
        norm_type: p of the p-norm (``float("inf")`` allowed).
        group_by: ``"module"`` (name prefix of ``depth`` components), ``"param_groups"`` (the optimizer's
            param groups, named by their ``"name"`` key) or ``"regex"`` (``patterns``).
        depth: name depth for ``group_by="module"``.
        patterns: ``{group_name: regex}`` for ``group_by="regex"`` (setting it implies ``"regex"``).
        log_ratios: also log ``||g|| / ||w||`` per group (one more pass, over the weights).
        log_nonfinite: log the number of NaN/Inf gradient elements (one more pass).
        log_max_abs: log the largest absolute gradient element (one more pass).
        prefix: key prefix.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_reg import GradientMonitor
        >>> trainer = pl.Trainer(callbacks=[GradientMonitor(group_by="module", depth=1)], logger=False)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        norm_type: float = 2.0,
        group_by: str = "module",
        depth: int = 1,
        patterns: dict[str, str] | None = None,
        log_ratios: bool = False,
        log_nonfinite: bool = True,
        log_max_abs: bool = True,
        prefix: str = "grad",
    ) -> None:
        super().__init__()
        if patterns is not None:
            group_by = "regex"
        if group_by not in _GROUP_BY:
            raise ValueError(f"`group_by` must be one of {_GROUP_BY}, got {group_by!r}.")
        if group_by == "regex" and not patterns:
            raise ValueError("`group_by='regex'` needs `patterns={group_name: regex, ...}`.")
        for name, rx in (patterns or {}).items():
            try:
                re.compile(rx)
            except (re.error, TypeError) as err:
                raise ValueError(f"`patterns[{name!r}]` must be a valid regex, got {rx!r}: {err}.") from err
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"`log_every_n_steps` must be a positive int or None, got {log_every_n_steps!r}")
        norm_type = float(norm_type)
        if not (norm_type > 0):
            raise ValueError(f"`norm_type` must be > 0 (or inf), got {norm_type!r}.")
        if depth < 1:
            raise ValueError(f"`depth` must be >= 1, got {depth!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.norm_type = norm_type
        self.group_by = group_by
        self.depth = depth
        self.patterns = dict(patterns) if patterns else None
        self.log_ratios = log_ratios
        self.log_nonfinite = log_nonfinite
        self.log_max_abs = log_max_abs
        self.prefix = prefix
        self.last_metrics: dict[str, Tensor] = {}
        self._groupings: dict[int, ParamGrouping] = {}
        self._ids_cache: dict[tuple[int, ...], Tensor] = {}
        self._observed_key: tuple[int, int, float] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _check_strategy(trainer, type(self).__name__)
        _STEP_CACHE.pop(trainer, None)
        self._observed_key = None
        self._groupings.clear()
        self._ids_cache.clear()

    def _grouping(self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> ParamGrouping:
        g = self._groupings.get(id(optimizer))
        if g is None:
            if self.group_by == "param_groups":
                g = group_by_param_groups(optimizer)
            elif self.group_by == "regex":
                g = group_by_regex(pl_module, self.patterns or {})
            else:
                g = group_by_module_depth(pl_module, self.depth)
            self._groupings[id(optimizer)] = g
        return g

    def _group_ids(self, grouping: ParamGrouping, params: list[Tensor], device: torch.device) -> Tensor:
        key = tuple(id(p) for p in params)
        ids = self._ids_cache.get(key)
        if ids is None:
            ids = grouping.ids_for(params, device=device)
            self._ids_cache[key] = ids
        return ids

    def observe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor] | None:
        """Measure (and log) this step's gradients if it is a logging step; idempotent within a step.

        Called from ``on_before_optimizer_step``; :class:`GradientClipping` calls it first so the monitor
        always sees pre-clip gradients. Returns the metrics logged, or ``None`` on non-logging steps.

        Args:
            trainer: the trainer.
            pl_module: the module.
            optimizer: the optimizer about to step.

        Example:
            >>> GradientMonitor().observe  # doctest: +ELLIPSIS
            <bound method GradientMonitor.observe of ...>
        """
        key = _step_key(trainer, optimizer, self.norm_type)
        if self._observed_key == key:
            return None
        self._observed_key = key
        if not _is_logging_step(trainer, self.log_every_n_steps):
            return None
        step, _ = _read_step_grads(trainer, optimizer, self.norm_type)
        if not step.grads:
            return None
        grouping = self._grouping(pl_module, optimizer)
        device = step.per_tensor.device
        ids = self._group_ids(grouping, step.params, device)
        reduce_fn = _reduce_fn(trainer, self.norm_type)
        _, groups = reduce_norms(step.per_tensor, self.norm_type, ids, len(grouping.names), reduce_fn)
        p = self.prefix
        metrics: dict[str, Tensor] = {f"{p}/norm_total": step.total}
        assert groups is not None
        metrics.update({f"{p}/norm/{name}": groups[i] for i, name in enumerate(grouping.names)})
        if self.log_ratios:
            w_per = per_tensor_norms([_local(q.detach()) for q in step.params], self.norm_type, device)
            _, w_groups = reduce_norms(w_per, self.norm_type, ids, len(grouping.names), reduce_fn)
            assert w_groups is not None
            ratio = groups / w_groups.clamp_min(1e-12)
            metrics.update({f"{p}/ratio/{name}": ratio[i] for i, name in enumerate(grouping.names)})
        if self.log_nonfinite:
            count = nonfinite_count(step.grads)
            if reduce_fn is not None:
                count = trainer.strategy.reduce(count, reduce_op="sum")
            metrics[f"{p}/nonfinite_count"] = count
        if self.log_max_abs:
            mx = per_tensor_norms(step.grads, math.inf, device).amax()
            if reduce_fn is not None:
                mx = trainer.strategy.reduce(mx, reduce_op=torch.distributed.ReduceOp.MAX)
            metrics[f"{p}/max_abs"] = mx
        self.last_metrics = metrics
        _write_to_loggers(trainer, metrics)
        return metrics

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.observe(trainer, pl_module, optimizer)
