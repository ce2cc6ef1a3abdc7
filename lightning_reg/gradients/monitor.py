"""``GradientMonitor``: fused, sync-free gradient-norm logging over :mod:`lightning_reg.gradients`."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.names import NameSelector, strip_wrapper_prefixes
from lightning_reg._shared.step_logging import is_logging_step, log_interval, log_step_metrics
from lightning_reg._shared.validation import (
    check_bool,
    check_choice,
    check_int,
    check_log_every_n_steps,
    check_number,
    check_str,
)
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.gradients.core import (
    ParamGrouping,
    ReduceFn,
    group_by_module_depth,
    group_by_param_groups,
    group_by_patterns,
    nonfinite_count,
    per_tensor_norms,
    reduce_norms,
)

__all__ = ["GradientMonitor"]

_GROUP_BY = ("module", "param_groups", "patterns")


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


class GradientMonitor(Callback):
    """Log total, per-group and (optionally) grad/weight norms on logging steps.

    Gradients are read in ``on_before_optimizer_step``: after AMP unscaling, after DDP's all-reduce and once
    per optimizer step under gradient accumulation. One ``torch._foreach_norm`` pass per device/dtype bucket
    gives all per-tensor norms; per-group and total norms are on-device index/sum ops; nothing is computed
    on steps that do not log. On logging steps (Lightning's rule, see the conventions page) the values are
    written to the loggers with one host sync and put into ``trainer.callback_metrics``, so
    ``EarlyStopping`` or ``ModelCheckpoint`` can monitor them; they are also kept in :attr:`last_metrics`.

    Logged keys (``prefix`` defaults to ``"grad"``): ``grad/norm_total``, ``grad/norm/<group>``,
    ``grad/ratio/<group>`` (``||g|| / ||w||``, if ``log_ratios``), ``grad/nonfinite_count`` and
    ``grad/max_abs``. With :class:`~lightning_reg.GradientClipping` also present, the norms are the
    pre-clip norms and gradients are read only once per step (the two callbacks share the computation).

    Under FSDP/ModelParallel (sharded gradients) the total and group norms are the p-th root of the
    all-reduced sum of local ``|g|^p`` (one collective). DeepSpeed is not supported (clear error at setup).

    Args:
        log_every_n_steps: logging interval in optimizer steps; ``None``: the Trainer's; ``0``: never.
        norm_type: p of the p-norm (``float("inf")`` allowed).
        group_by: ``"module"`` (the owning module's path cut to ``depth`` levels below the prefix all
            paths share, e.g. ``net.layer1`` for a model held as ``self.net``; a group is never a single
            parameter), ``"param_groups"`` (the optimizer's param groups, named by their ``"name"`` key,
            else ``group_<i>``; groups added during training, e.g. by ``BackboneFinetuning``, are picked
            up) or ``"patterns"``; ``None`` (default): ``"patterns"`` with ``patterns``, else ``"module"``.
        depth: name depth for ``group_by="module"``.
        patterns: ``{group_name: pattern or [patterns]}`` in the library's name-selector syntax (a dotted
            name or prefix, a glob, or ``re:<regex>``); setting it implies ``group_by="patterns"`` (another
            ``group_by`` with it is refused). A group
            that matches no parameter is not logged, and a warning names it.
        log_ratios: also log ``||g|| / ||w||`` per group (one more pass, over the weights).
        log_nonfinite: log the number of NaN/Inf gradient elements (one more pass).
        log_max_abs: log the largest absolute gradient element (one more pass).
        prefix: first component of every key.
        verbose: 0 quiet; 1 one line at fit start; 2 also the groups.

    Example:
        >>> import lightning as L
        >>> monitor = GradientMonitor(patterns={"attention": "*.attn", "mlp": ["*.fc1", "*.fc2"]})
        >>> trainer = L.Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
        >>> monitor.group_by
        'patterns'
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        norm_type: float = 2.0,
        group_by: str | None = None,
        depth: int = 1,
        patterns: Mapping[str, str | Sequence[str]] | None = None,
        log_ratios: bool = False,
        log_nonfinite: bool = True,
        log_max_abs: bool = True,
        prefix: str = "grad",
        verbose: int | bool = 1,
    ) -> None:
        super().__init__()
        if patterns is not None:
            if group_by not in (None, "patterns"):
                raise ValueError(
                    f"`patterns` groups the parameters by name, and `group_by={group_by!r}` by something "
                    "else: pass one of them (patterns= alone implies group_by='patterns')."
                )
            group_by = "patterns"
        group_by = "module" if group_by is None else group_by
        check_choice("group_by", group_by, _GROUP_BY)
        if group_by == "patterns":
            if not isinstance(patterns, Mapping) or not patterns:
                raise ValueError(
                    "`group_by='patterns'` needs `patterns={group_name: pattern or [patterns], ...}`; got"
                    f" {patterns!r}."
                )
            # compile once to report bad patterns at construction (same syntax as everywhere else)
            group_by_patterns(torch.nn.Module(), patterns)
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.norm_type = check_number("norm_type", norm_type, low=0, low_open=True, finite=False)
        self.group_by = group_by
        self.depth = check_int("depth", depth, low=1)
        self.patterns = dict(patterns) if patterns else None
        self.log_ratios = check_bool("log_ratios", log_ratios)
        self.log_nonfinite = check_bool("log_nonfinite", log_nonfinite)
        self.log_max_abs = check_bool("log_max_abs", log_max_abs)
        self.prefix = check_str("prefix", prefix)
        self.verbose = check_verbose(verbose)
        self.last_metrics: dict[str, Tensor] = {}
        self._groupings: dict[int, ParamGrouping] = {}
        self._ids_cache: dict[tuple[int, ...], Tensor] = {}
        self._shown: dict[int, list[int]] = {}
        self._observed_key: tuple[int, int, float] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _check_strategy(trainer, type(self).__name__)
        _STEP_CACHE.pop(trainer, None)
        self._observed_key = None
        self._groupings.clear()
        self._ids_cache.clear()
        self._shown.clear()
        self.last_metrics = {}
        if stage == "fit" and self.group_by == "patterns":
            empty = self._grouping(pl_module, None).empty_groups()
            if empty:
                names = [strip_wrapper_prefixes(n) for n, _ in pl_module.named_parameters()]
                hints = []
                for group in empty:
                    spec = (self.patterns or {})[group]
                    specs = [spec] if isinstance(spec, str) else list(spec)
                    selector = NameSelector(specs, f"patterns[{group!r}]")
                    hints += [f"{p!r} -> {s!r}" for p, s in selector.suggestions(names).items()]
                rank_zero_warn(
                    f"GradientMonitor: pattern group(s) {empty} match no parameter of"
                    f" {type(pl_module).__name__} and are not logged"
                    + (f"; did you mean {', '.join(hints)}?" if hints else ".")
                    + " Names are relative to the LightningModule; list them with"
                    " [n for n, _ in model.named_parameters()]."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = log_interval(trainer, self.log_every_n_steps)
        if self.verbose < 1:
            return
        when = "never (log_every_n_steps=0)" if n == 0 else f"every {n} optimizer steps"
        groups = [g for opt in trainer.optimizers for g in self._grouping(pl_module, opt).names]
        how = {"module": f"depth {self.depth}", "param_groups": "param groups", "patterns": "patterns"}
        say(
            self.verbose,
            1,
            f"GradientMonitor: {self.prefix}/norm_total and {len(groups)} group norms ({how[self.group_by]}),"
            f" L{self.norm_type:g}, {when}.",
        )
        say(self.verbose, 2, f"GradientMonitor groups: {groups}")

    def _grouping(
        self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer | None
    ) -> ParamGrouping:
        key = id(optimizer) if self.group_by == "param_groups" else 0
        g = self._groupings.get(key)
        if g is not None and optimizer is not None and self.group_by == "param_groups":
            if len(g.names) != len(optimizer.param_groups):  # a group was added (e.g. BackboneFinetuning)
                g = None
                self._ids_cache.clear()
                self._shown.clear()
        if g is None:
            if self.group_by == "param_groups":
                assert optimizer is not None
                g = group_by_param_groups(optimizer)
            elif self.group_by == "patterns":
                g = group_by_patterns(pl_module, self.patterns or {}, strip=strip_wrapper_prefixes)
            else:
                g = group_by_module_depth(pl_module, self.depth)
            self._groupings[key] = g
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
        """Measure and log this step's gradients if it is a logging step; idempotent within a step.

        Called from ``on_before_optimizer_step``; :class:`GradientClipping` calls it first so the monitor
        always sees pre-clip gradients. In manual optimization you can call it yourself before
        ``opt.step()``.

        Args:
            trainer: the trainer.
            pl_module: the module.
            optimizer: the optimizer about to step.

        Returns:
            The metrics logged, or ``None`` on steps that do not log.
        """
        key = _step_key(trainer, optimizer, self.norm_type)
        if self._observed_key == key:
            return None
        self._observed_key = key
        if not is_logging_step(trainer, self.log_every_n_steps):
            return None
        step, _ = _read_step_grads(trainer, optimizer, self.norm_type)
        if not step.grads:
            return None
        grouping = self._grouping(pl_module, optimizer)
        device = step.per_tensor.device
        ids = self._group_ids(grouping, step.params, device)
        reduce_fn = _reduce_fn(trainer, self.norm_type)
        _, groups = reduce_norms(step.per_tensor, self.norm_type, ids, len(grouping.names), reduce_fn)
        assert groups is not None
        shown = self._shown.get(id(grouping))
        if shown is None:  # groups that hold a parameter (an empty pattern group is not logged)
            empty = set(grouping.empty_groups())
            shown = self._shown[id(grouping)] = [i for i, n in enumerate(grouping.names) if n not in empty]
        p = self.prefix
        metrics: dict[str, Tensor] = {Keys.grad("norm_total", p): step.total}
        metrics.update({Keys.grad(f"norm/{grouping.names[i]}", p): groups[i] for i in shown})
        if self.log_ratios:
            w_per = per_tensor_norms([_local(q.detach()) for q in step.params], self.norm_type, device)
            _, w_groups = reduce_norms(w_per, self.norm_type, ids, len(grouping.names), reduce_fn)
            assert w_groups is not None
            ratio = groups / w_groups.clamp_min(1e-12)
            metrics.update({Keys.grad(f"ratio/{grouping.names[i]}", p): ratio[i] for i in shown})
        if self.log_nonfinite:
            count = nonfinite_count(step.grads)
            if reduce_fn is not None:
                count = trainer.strategy.reduce(count, reduce_op="sum")
            metrics[Keys.grad("nonfinite_count", p)] = count
        if self.log_max_abs:
            mx = per_tensor_norms(step.grads, math.inf, device).amax()
            if reduce_fn is not None:
                mx = trainer.strategy.reduce(mx, reduce_op=torch.distributed.ReduceOp.MAX)
            metrics[Keys.grad("max_abs", p)] = mx
        self.last_metrics = metrics
        log_step_metrics(trainer, metrics)
        return metrics

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.observe(trainer, pl_module, optimizer)
