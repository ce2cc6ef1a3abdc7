"""``StochasticDepthScheduler``: drop-path (and dropout) rates by depth rule and time schedule.

A thin Lightning shell over ``lightning_reg.stochastic_depth.layers`` (finding drop-path modules),
``lightning_reg.stochastic_depth.rate_rules`` (depth rules and time schedules) and
``lightning_reg.stochastic_depth.rate_tensor`` (rates in one device tensor, so ``torch.compile`` does not
recompile when they change). Per optimizer step it does nothing when the schedule's multiplier did not
change, and otherwise one in-place tensor multiply plus float attribute writes: no host-device sync.

Example:
    >>> import lightning as L
    >>> from lightning_reg import StochasticDepthScheduler
    >>> cb = StochasticDepthScheduler(max_rate=0.1, rule="linear", schedule="warmup", cutoff=0.1,
    ...                               cutoff_unit="fraction")
    >>> trainer = L.Trainer(callbacks=[cb], logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.step_logging import is_logging_step, log_step_metrics
from lightning_reg._shared.validation import check_bool, check_log_every_n_steps, check_rate
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.stochastic_depth.layers import DropRateSite, find_drop_rate_modules
from lightning_reg.stochastic_depth.rate_rules import DepthRule, DepthRuleSpec, TimeSchedule, TimeScheduleSpec
from lightning_reg.stochastic_depth.rate_tensor import ScheduledRates

__all__ = ["StochasticDepthScheduler"]

_NONE_FOUND = (
    "StochasticDepthScheduler found no drop-path module in {model}{dropout}. It schedules lightning_reg"
    " `DropPath`, `torchvision.ops.StochasticDepth`, timm `DropPath` and modules with a `drop_rate_attribute`"
    " class attribute, and with include_dropout=True every `nn.Dropout` and the dropout between the layers"
    " of a multi-layer `nn.LSTM`/`nn.GRU`/`nn.RNN`. Insert DropPath into a model built"
    " without it with `lightning_reg.add_stochastic_depth(model, max_rate)` (torchvision ResNets, or your"
    " blocks via `branch_ends={{MyBlock: 'last_branch_layer'}}`). Note that timm builds `nn.Identity` instead"
    " of DropPath when `drop_path_rate=0` (the default): build the timm model with `drop_path_rate>0` (e.g."
    " `timm.create_model(name, drop_path_rate=0.1)`), then this callback can rescale or reschedule it."
)


def _module_device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _is_compiled(module: nn.Module) -> bool:
    if getattr(module, "_compiler_ctx", None):
        return True
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(m, OptimizedModule) for m in module.modules())


class StochasticDepthScheduler(Callback):
    """Set the rate of every drop-path module by a depth rule and a time schedule over optimizer steps.

    **What it finds** (in registration order, i.e. by depth): lightning_reg
    [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath]
    and ``torchvision.ops.StochasticDepth`` (attribute ``p``), timm ``DropPath`` (attribute
    ``drop_prob``), and any module whose class defines ``drop_rate_attribute = "<name of its float rate
    attribute>"`` (the protocol for your own layers). Drop-path modules with the same parent module (e.g.
    timm ViT's ``drop_path1`` and ``drop_path2`` in one block) form one depth level and share one rate.
    With ``include_dropout=True`` every ``nn.Dropout`` (and ``Dropout1d/2d/3d``, ``AlphaDropout``,
    ``FeatureAlphaDropout``) is scheduled too, with its own target, and so is the ``dropout`` between the
    layers of a recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) of more than one layer; a model with
    dropout and no drop-path module is then scheduled for its dropout alone.

    **Target rates** (``DepthRuleSpec``, ``cb.depth``): with ``max_rate=None`` each module keeps the rate
    the model was built with as its target (e.g. timm's or torchvision's own depth rule) and only the time
    schedule is applied; with a ``max_rate``, targets come from ``rule`` over the ``L`` depth levels, or,
    with ``scale_model_rates=True``, from the model's own rates scaled so that the largest becomes
    ``max_rate`` (the model's depth profile kept; a model whose rates are all 0 gets ``rule``). Caveat:
    timm builds ``nn.Identity`` for blocks whose rate is 0 (the first block under its linear rule), so
    those blocks are not seen and ``L`` is one less than the model's depth.

    **Time schedule** (``TimeScheduleSpec``, ``cb.timing``: the multiplier of the targets at optimizer step
    ``t``, ``trainer.global_step``, of ``T = trainer.estimated_stepping_batches``): ``"constant"``,
    ``"warmup"`` (0 to target by ``cutoff``), ``"early"`` (Liu et al. 2023: target, decaying linearly
    (``early_mode="linear"``) or constant, until ``cutoff``, then 0), ``"late"`` (0 until ``cutoff``, then
    target) or a callable ``(t, T) -> multiplier``.

    **torch.compile**: with any schedule but ``"constant"`` the rates live in one float64 tensor on the
    model's device, updated in place
    ([`ScheduledRates`][lightning_reg.stochastic_depth.rate_tensor.ScheduledRates]):
    a compiled model builds one graph for the whole schedule instead of one per rate (dynamo gives up after
    8 and runs eagerly). A module whose rate is 0 for two steps in a row or more (after an ``"early"``
    cutoff, before a ``"late"`` one, a target of 0) takes its no-draw path, which is one more graph, compiled
    once. Modules of the ``drop_rate_attribute`` protocol and subclasses of the known classes are
    scheduled by attribute writes and recompile at each new rate (a warning says so when the model is
    compiled). The compiled model draws bitwise the masks the eager model draws (``"eager"`` and
    ``"aot_eager"`` backends; inductor needs ``torch._inductor.config.fallback_random = True``).

    At fit end (and on an exception) the rates the model had are restored. The current maximum rate is
    logged as ``stochastic_depth/max_rate`` (and ``stochastic_depth/dropout_max_rate``) on Lightning's
    logging steps and is monitorable. The state (step, original and target rates) is saved in
    checkpoints; a resumed run takes the checkpoint's target rates and continues the schedule exactly.
    Rates are computed from the global step, identical on all ranks; per-sample (``"row"``) drop path
    keeps every parameter in the graph, so DDP needs no ``find_unused_parameters``. One scheduler per
    Trainer: it schedules drop path and dropout together.

    Args:
        max_rate: maximum rate of the depth rule, in ``[0, 1)``; ``None`` keeps the model's own rates as
            targets. Needs drop-path modules.
        rule: depth rule, ``"linear"`` (timm), ``"huang"``, ``"uniform"`` or a callable
            ``(num_levels, max_rate) -> rates`` (or its dotted import path, for YAML); used only with
            ``max_rate``.
        schedule: ``"constant"``, ``"warmup"``, ``"early"``, ``"late"`` or a callable
            ``(step, total_steps) -> multiplier`` (or its dotted import path, for YAML).
        cutoff: where ``"warmup"`` ends / ``"early"`` switches off / ``"late"`` switches on, in
            ``cutoff_unit``; required by those schedules and refused by the others.
        cutoff_unit: ``"step"`` (optimizer steps), ``"epoch"`` (multiplied by the optimizer steps per
            epoch) or ``"fraction"`` (of ``trainer.estimated_stepping_batches``).
        early_mode: ``"linear"`` or ``"constant"`` for the ``"early"`` schedule.
        include_dropout: also schedule every dropout module.
        dropout_rate: target rate of every dropout module, in ``[0, 1)``; ``None`` keeps each module's own.
            Needs ``include_dropout=True``.
        scale_model_rates: with ``max_rate``: keep the model's own depth profile (its per-module rates)
            scaled so that the largest becomes ``max_rate``, instead of ``rule``; a model whose rates are
            all 0 gets ``rule``. Needs ``max_rate``.
        log_every_n_steps: logging interval (Lightning's rule); ``None`` uses the Trainer's; ``0`` disables.
        verbose: 0 quiet, 1 one line at fit start, 2 also the target rate of every depth level.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a rate outside ``[0, 1)``, an unknown rule, schedule, unit or mode, a missing cutoff, or
            an argument the chosen schedule does not use (``cutoff`` with ``"constant"``, ``early_mode``
            without ``"early"``, ``dropout_rate`` without ``include_dropout``, ``scale_model_rates``
            without ``max_rate``).

    Example:
        >>> cb = StochasticDepthScheduler(max_rate=0.2, schedule="early", cutoff=2, cutoff_unit="epoch")
        >>> cb.state_key.startswith("StochasticDepthScheduler{'max_rate': 0.2")
        True
    """

    def __init__(
        self,
        max_rate: float | None = None,
        rule: str | DepthRule = "linear",
        schedule: str | TimeSchedule = "constant",
        cutoff: float | None = None,
        cutoff_unit: Literal["step", "epoch", "fraction"] = "step",
        early_mode: Literal["linear", "constant"] = "linear",
        include_dropout: bool = False,
        dropout_rate: float | None = None,
        scale_model_rates: bool = False,
        log_every_n_steps: int | None = None,
        verbose: int | bool = 1,
    ) -> None:
        super().__init__()
        #: The target rates of drop-path modules: ``max_rate``, ``rule``, ``scale_model_rates``.
        self.depth = DepthRuleSpec(max_rate, rule, scale_model_rates)
        #: The time schedule: ``schedule``, ``cutoff``, ``cutoff_unit``, ``early_mode``.
        self.timing = TimeScheduleSpec(schedule, cutoff, cutoff_unit, early_mode)
        self.include_dropout = check_bool("include_dropout", include_dropout)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate, none_ok=True)
        if self.dropout_rate is not None and not include_dropout:
            raise ValueError(
                f"`dropout_rate` applies only with include_dropout=True; got dropout_rate={dropout_rate!r}"
                " with include_dropout=False."
            )
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.verbose = check_verbose(verbose)

        # Filled at fit start; parallel lists, one entry per scheduled module.
        self._found: list[DropRateSite] = []
        self._original_rates: list[float] = []
        self._target_rates: list[float] = []
        self._num_drop_path = 0
        self._table: ScheduledRates | None = None
        self._schedule_fn: TimeSchedule | None = None
        self._total_steps = 0
        self._step = -1
        self._logged_step = -1
        self._multiplier: float | None = None
        self._loaded: dict[str, Any] | None = None

    # The constructor arguments, as LightningCLI and ``preset_config`` read them back.
    @property
    def max_rate(self) -> float | None:
        """Maximum rate of the depth rule (``None``: the model's own rates)."""
        return self.depth.max_rate

    @property
    def rule(self) -> str | DepthRule:
        """The depth rule (a name or a callable)."""
        return self.depth.rule

    @property
    def scale_model_rates(self) -> bool:
        """Whether the model's own rates are scaled to ``max_rate`` instead of applying ``rule``."""
        return self.depth.scale_model_rates

    @property
    def schedule(self) -> str | TimeSchedule:
        """The time schedule (a name or a callable)."""
        return self.timing.schedule

    @property
    def cutoff(self) -> float | None:
        """Where the schedule switches, in ``cutoff_unit``."""
        return self.timing.cutoff

    @property
    def cutoff_unit(self) -> str:
        """``"step"``, ``"epoch"`` or ``"fraction"``."""
        return self.timing.cutoff_unit

    @property
    def early_mode(self) -> str:
        """``"linear"`` or ``"constant"`` (the ``"early"`` schedule)."""
        return self.timing.early_mode

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            max_rate=self.max_rate,
            rule=self.depth.rule_name,
            schedule=self.timing.schedule_name,
            include_dropout=self.include_dropout,
        )

    # ------------------------------------------------------------------ discovery
    def _discover(self, model: nn.Module) -> None:
        found = find_drop_rate_modules(model, include_dropout=self.include_dropout)
        drop_paths = [f for f in found if not f.is_dropout]
        dropouts = [f for f in found if f.is_dropout]
        if not drop_paths and not dropouts:
            extra = " (nor any dropout module)" if self.include_dropout else ""
            raise ValueError(_NONE_FOUND.format(model=type(model).__name__, dropout=extra))
        if not drop_paths and not self.include_dropout:
            raise ValueError(_NONE_FOUND.format(model=type(model).__name__, dropout=""))
        if not drop_paths and self.max_rate is not None:
            raise ValueError(
                f"StochasticDepthScheduler(max_rate={self.max_rate}) found no drop-path module in"
                f" {type(model).__name__} to apply it to (only {len(dropouts)} dropout modules). To schedule"
                " dropout alone, leave max_rate=None and set `dropout_rate` (or keep the modules' own rates)."
            )
        if self.include_dropout and not dropouts:
            rank_zero_warn(
                f"StochasticDepthScheduler(include_dropout=True) found no dropout module in"
                f" {type(model).__name__}; only drop-path modules are scheduled."
            )
        self._found = drop_paths + dropouts
        self._num_drop_path = len(drop_paths)
        self._original_rates = [float(getattr(f.module, f.attr)) for f in self._found]
        own = self._original_rates[: len(drop_paths)]
        targets = self.depth.targets(own, [f.level for f in drop_paths])
        for f in dropouts:
            targets.append(
                self.dropout_rate if self.dropout_rate is not None else float(getattr(f.module, f.attr))
            )
        self._target_rates = targets

    def _num_levels(self) -> int:
        return 1 + max((f.level for f in self._found if not f.is_dropout), default=-1)

    def _summary(self) -> str:
        parts = []
        if self._num_drop_path:
            classes = (ScheduledRates.original_type(f.module) for f in self._found)
            kinds = sorted({c.__name__ for c in list(classes)[: self._num_drop_path]})
            top = max(self._target_rates[: self._num_drop_path], default=0.0)
            parts.append(
                f"{self._num_drop_path} drop-path modules ({', '.join(kinds)}) in {self._num_levels()} depth"
                f" levels, max target {top:.4g}"
            )
        dropouts = len(self._found) - self._num_drop_path
        if dropouts:
            top = max(self._target_rates[self._num_drop_path :], default=0.0)
            parts.append(f"{dropouts} dropout module{'s' if dropouts != 1 else ''}, max target {top:.4g}")
        schedule = self.timing.schedule_name
        if self.cutoff is not None:
            schedule += f" (cutoff {self.cutoff:g} {self.cutoff_unit})"
        rates = (
            f"rates in a {str(self._table.rates.dtype).replace('torch.', '')} tensor on"
            f" {self._table.rates.device}"
            if self._table is not None
            else "constant rates"
        )
        return f"StochasticDepthScheduler: {'; '.join(parts)}; schedule {schedule}; {rates}."

    def _details(self) -> str:
        lines: list[str] = []
        shown: set[int] = set()
        for f, target in zip(self._found, self._target_rates):
            if f.is_dropout:
                lines.append(f"  dropout {f.name}: target {target:.4g}")
            elif f.level not in shown:
                shown.add(f.level)
                lines.append(f"  level {f.level} ({f.name}): target {target:.4g}")
        if self._table is not None and self._table.attribute_bound:
            names = self._table.attribute_bound_names()
            lines.append(f"  scheduled by attribute writes (recompile under torch.compile): {names}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        schedulers = [cb for cb in callbacks if isinstance(cb, StochasticDepthScheduler)]
        if len(schedulers) > 1:
            raise ValueError(
                f"The Trainer has {len(schedulers)} StochasticDepthScheduler callbacks; use one. They would"
                " write the same rates in turn (the last one wins each step). One scheduler handles drop path"
                " and dropout together (include_dropout=True, dropout_rate=...)."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        self._discover(pl_module)
        self._step = -1
        self._logged_step = -1
        self._multiplier = None
        if self.schedule != "constant":
            # Bind (swap classes) before the sanity check, so a compiled model sees one class all fit long.
            self._table = ScheduledRates(self._found, self._target_rates, _module_device(pl_module))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is not None:
            self._adopt_loaded_state(self._loaded)
            self._loaded = None
        total = trainer.estimated_stepping_batches
        self._total_steps = int(total) if math.isfinite(total) and total >= 0 else -1
        self._schedule_fn = self._build_schedule(trainer)
        if self._table is not None:
            self._table.set_targets(self._target_rates)  # a resumed run's targets come from its checkpoint
            if self._table.attribute_bound and _is_compiled(pl_module):
                names = self._table.attribute_bound_names()
                rank_zero_warn(
                    f"StochasticDepthScheduler: {len(names)} scheduled modules keep their rate in a float"
                    f" attribute (e.g. {names[0]!r}): under torch.compile each new rate recompiles them. Use"
                    " lightning_reg DropPath (or the exact torchvision, timm or torch classes), whose rates"
                    " are read from a tensor."
                )
        say(self.verbose, 1, self._summary())
        if self.verbose >= 2:
            say(self.verbose, 2, self._details())
        self._update(trainer)

    def _build_schedule(self, trainer: Trainer) -> TimeSchedule:
        if not self.timing.needs_cutoff:
            return self.timing.function()
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
        cutoff = self.timing.cutoff_steps(per_epoch, self._total_steps)
        if self._total_steps >= 0 and cutoff > self._total_steps:
            rank_zero_warn(
                f"StochasticDepthScheduler: the {self.schedule!r} cutoff ({cutoff} steps) is beyond the"
                f" training length ({self._total_steps} optimizer steps); the schedule will not reach"
                " its cutoff."
            )
        return self.timing.function(cutoff)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self._step:
            self._update(trainer)
        if step != self._logged_step and is_logging_step(trainer, self.log_every_n_steps):
            self._logged_step = step
            metrics = {}
            if self._num_drop_path:
                metrics[Keys.DROP_PATH_MAX_RATE] = self.current_max_rate()
            if self._num_drop_path < len(self._found):
                metrics[Keys.DROPOUT_MAX_RATE] = self.current_max_rate(dropout=True)
            log_step_metrics(trainer, metrics)

    def _multiplier_at(self, step: int) -> float:
        assert self._schedule_fn is not None
        multiplier = float(self._schedule_fn(step, self._total_steps))
        if not 0.0 <= multiplier <= 1.0:
            raise ValueError(
                f"Time schedule {self.timing.schedule_name!r} returned {multiplier!r} at step {step};"
                " it must return a multiplier in [0, 1]."
            )
        return multiplier

    def _update(self, trainer: Trainer) -> None:
        step = trainer.global_step
        self._step = step
        multiplier = self._multiplier_at(step)
        if self._table is not None:
            self._table.apply(multiplier, self._multiplier_at(step + 1))
        elif multiplier != self._multiplier:
            for f, target in zip(self._found, self._target_rates):
                setattr(f.module, f.attr, target * multiplier)
        self._multiplier = multiplier

    def current_max_rate(self, dropout: bool = False) -> float:
        """Return the largest rate in use among drop-path (or, with ``dropout=True``, dropout) modules.

        Args:
            dropout: report dropout modules instead of drop-path modules.

        Example:
            >>> StochasticDepthScheduler().current_max_rate()
            0.0
        """
        targets = (
            self._target_rates[self._num_drop_path :]
            if dropout
            else self._target_rates[: self._num_drop_path]
        )
        return max(targets, default=0.0) * (self._multiplier or 0.0)

    def _release(self) -> None:
        if self._table is not None:
            self._table.release()
            self._table = None

    def _restore(self) -> None:
        self._release()
        for f, rate in zip(self._found, self._original_rates):
            setattr(f.module, f.attr, rate)
        self._multiplier = None

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self._step,
            "names": [f.name for f in self._found],
            "original_rates": list(self._original_rates),
            "target_rates": list(self._target_rates),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self._step = int(state_dict.get("step", -1))

    def _adopt_loaded_state(self, state: dict[str, Any]) -> None:
        names = [f.name for f in self._found]
        if list(state.get("names", [])) != names:
            rank_zero_warn(
                "StochasticDepthScheduler: the checkpoint's drop-path modules do not match this model's"
                f" ({len(state.get('names', []))} vs {len(names)}); keeping the freshly computed rates."
            )
            return
        # targets come from the checkpoint; the rates restored at fit end stay those this model had at fit
        # start (the checkpoint's "original_rates" are those of the first run's model, kept for reference)
        self._target_rates = [float(r) for r in state["target_rates"]]
        self._step = -1  # force a rate update at the first batch of the resumed run
