"""``GradientMonitor``: fused, sync-free gradient-norm logging over ``lightning_reg.gradients``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
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
    check_str,
)
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.gradients.functional import (
    ParamGrouping,
    check_norm_type,
    group_by_module_depth,
    group_by_param_groups,
    group_by_patterns,
    nonfinite_count,
    per_tensor_norms,
    reduce_norms,
)
from lightning_reg.gradients.shared_gradients import SharedGradients, StepGradients

__all__ = ["GradientMonitor"]

_GROUP_BY = ("module", "param_groups", "patterns")


class GradientMonitor(Callback):
    """Log total, per-group and (optionally) grad/weight norms on logging steps.

    Gradients are read in ``on_before_optimizer_step``: after AMP unscaling, after DDP's all-reduce and once
    per optimizer step under gradient accumulation. One ``torch._foreach_norm`` pass per device/dtype bucket
    gives all per-tensor norms; per-group and total norms are on-device index/sum ops; nothing is computed
    on steps that do not log. On logging steps (Lightning's rule, see the conventions page) the values are
    written to the loggers with one host sync and put into ``trainer.callback_metrics``, so
    ``EarlyStopping`` or ``ModelCheckpoint`` can monitor them; they are also kept in ``last_metrics``.

    Logged keys (``prefix`` defaults to ``"grad"``): ``grad/norm_total``, ``grad/norm/<group>``,
    ``grad/ratio/<group>`` (``||g|| / ||w||``, if ``log_ratios``), ``grad/nonfinite_count`` and
    ``grad/max_abs``. With ``GradientClipping`` also present, the norms are the pre-clip norms whatever
    the order of the callbacks, and gradients are read only once per step: the two callbacks share one
    ``SharedGradients`` (``monitor.shared_gradients``), set up at fit start.

    A frozen group (no parameter with ``requires_grad=True``, e.g. a backbone frozen for fine-tuning) has
    no gradient, so it has no norm: it is not logged (rather than logged as ``0.0``, which would read as
    vanishing gradients) until a parameter of it is trainable again. ``verbose`` names the frozen groups
    at fit start.

    Under FSDP/ModelParallel (sharded gradients) the total and group norms are the p-th root of the
    all-reduced sum of local ``|g|^p`` (one collective). DeepSpeed is not supported (clear error at setup).

    Args:
        log_every_n_steps: logging interval in optimizer steps; ``None``: the Trainer's; ``0``: never.
        norm_type: p of the p-norm: a number ``> 0``, ``float("inf")`` or the string ``"inf"`` (the
            max norm).
        group_by: ``"module"`` (the owning module's path cut to ``depth`` levels below the prefix all
            paths share, e.g. ``net.layer1`` for a model held as ``self.net``; a group is never a single
            parameter, and a module's own parameters, grouped apart from its children's, are the group
            ``<module>/own``, e.g. ``net/own`` for a ViT's ``cls_token``), ``"param_groups"`` (the
            optimizer's param groups, named by their ``"name"`` key, else ``group_<i>``; groups added
            during training, e.g. by ``BackboneFinetuning``, are picked up) or ``"patterns"``; ``None``
            (default): ``"patterns"`` with ``patterns``, else ``"module"``.
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
        norm_type: float | str = 2.0,
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
        self.norm_type = check_norm_type(norm_type)
        self.group_by = group_by
        self.depth = check_int("depth", depth, low=1)
        self.patterns = dict(patterns) if patterns else None
        self.log_ratios = check_bool("log_ratios", log_ratios)
        self.log_nonfinite = check_bool("log_nonfinite", log_nonfinite)
        self.log_max_abs = check_bool("log_max_abs", log_max_abs)
        self.prefix = check_str("prefix", prefix)
        self.verbose = check_verbose(verbose)
        self.last_metrics: dict[str, Tensor] = {}
        #: The gradients of the current step, shared with a ``GradientClipping`` (set at setup).
        self.shared_gradients: SharedGradients | None = None
        self._groupings: dict[int, ParamGrouping] = {}
        self._ids_cache: dict[tuple[int, ...], Tensor] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # registered as a pre-change reader: a GradientClipping lets it see the gradients before clipping
        self.shared_gradients = SharedGradients.join(trainer, self, reader=self.observe)
        self.shared_gradients.check_strategy(type(self).__name__)
        self._groupings.clear()
        self._ids_cache.clear()
        self.last_metrics = {}
        if stage == "fit" and self.group_by == "patterns":
            self._warn_empty_pattern_groups(pl_module)

    def _warn_empty_pattern_groups(self, pl_module: pl.LightningModule) -> None:
        empty = self._grouping(pl_module, None).empty_groups()
        if not empty:
            return
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
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.shared_gradients = None  # the next fit shares a fresh one

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.shared_gradients = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = log_interval(trainer, self.log_every_n_steps)
        if self.verbose < 1:
            return
        when = "never (log_every_n_steps=0)" if n == 0 else f"every {n} optimizer steps"
        groupings = [self._grouping(pl_module, opt) for opt in trainer.optimizers]
        groups = [name for g in groupings for name in g.names]
        frozen = [name for g in groupings for name in self._frozen_groups(g, pl_module)]
        how = {"module": f"depth {self.depth}", "param_groups": "param groups", "patterns": "patterns"}
        note = f"; frozen, not logged while frozen: {frozen}" if frozen else ""
        say(
            self.verbose,
            1,
            f"GradientMonitor: {self.prefix}/norm_total and {len(groups)} group norms ({how[self.group_by]}),"
            f" L{self.norm_type:g}, {when}{note}.",
        )
        say(self.verbose, 2, f"GradientMonitor groups: {groups}")

    @staticmethod
    def _frozen_groups(grouping: ParamGrouping, pl_module: pl.LightningModule) -> list[str]:
        """Return the groups with parameters, none trainable (empty pattern groups warned at setup)."""
        trainable = grouping.trainable_groups(pl_module.parameters())
        empty = set(grouping.empty_groups())
        return [n for i, n in enumerate(grouping.names) if i not in trainable and n not in empty]

    def _grouping(
        self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer | None
    ) -> ParamGrouping:
        key = id(optimizer) if self.group_by == "param_groups" else 0
        g = self._groupings.get(key)
        if g is not None and optimizer is not None and self.group_by == "param_groups":
            if len(g.names) != len(optimizer.param_groups):  # a group was added (e.g. BackboneFinetuning)
                g = None
                self._ids_cache.clear()
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

        Called from ``on_before_optimizer_step``, and by ``GradientClipping`` before it clips (the monitor
        is a pre-change reader of their ``SharedGradients``), so the monitor always sees pre-clip
        gradients. In manual optimization you can call it yourself before ``opt.step()``.

        Args:
            trainer: the trainer.
            pl_module: the module.
            optimizer: the optimizer about to step.

        Returns:
            The metrics logged, or ``None`` on steps that do not log.
        """
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer
        shared = self._shared(trainer)
        if not shared.first_call(self, optimizer) or not is_logging_step(trainer, self.log_every_n_steps):
            return None
        step = shared.read(optimizer, self.norm_type)
        if not step.grads:
            return None
        metrics = self._measure(trainer, pl_module, self._grouping(pl_module, optimizer), step)
        self.last_metrics = metrics
        log_step_metrics(trainer, metrics)
        return metrics

    def _shared(self, trainer: pl.Trainer) -> SharedGradients:
        """Return the step's shared gradients; a private instance when called outside a fit's setup."""
        if self.shared_gradients is None or self.shared_gradients.trainer is not trainer:
            self.shared_gradients = SharedGradients.join(trainer, self, reader=self.observe)
        return self.shared_gradients

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, grouping: ParamGrouping, step: StepGradients
    ) -> dict[str, Tensor]:
        """Total, group (trainable groups only), ratio, non-finite and max-abs values: tensors, no sync."""
        assert step.per_tensor is not None and step.total is not None
        device = step.per_tensor.device
        ids = self._group_ids(grouping, step.params, device)
        n = len(grouping.names)
        reduce_fn = self._shared(trainer).reduce_fn(self.norm_type)
        _, groups = reduce_norms(step.per_tensor, self.norm_type, ids, n, reduce_fn)
        assert groups is not None
        shown = sorted(grouping.trainable_groups(pl_module.parameters()))  # frozen and empty groups: no norm
        p = self.prefix
        metrics: dict[str, Tensor] = {Keys.grad("norm_total", p): step.total}
        metrics.update({Keys.grad(f"norm/{grouping.names[i]}", p): groups[i] for i in shown})
        if self.log_ratios:
            w_per = per_tensor_norms(step.local_weights(), self.norm_type, device)
            _, w_groups = reduce_norms(w_per, self.norm_type, ids, n, reduce_fn)
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
                mx = trainer.strategy.reduce(mx, reduce_op="max")
            metrics[Keys.grad("max_abs", p)] = mx
        return metrics

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.observe(trainer, pl_module, optimizer)
