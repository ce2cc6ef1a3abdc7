"""``StochasticDepthScheduler``: drop-path (and dropout) rates by depth rule and time schedule.

A thin Lightning shell over :mod:`lightning_reg.stochastic_depth.layers` (finding drop-path modules),
:mod:`lightning_reg.stochastic_depth.schedules` (depth rules and time schedules) and
:mod:`lightning_reg.stochastic_depth.rates` (rates in one device tensor, so ``torch.compile`` does not
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

import importlib
import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.step_logging import is_logging_step, log_step_metrics
from lightning_reg._shared.validation import (
    check_bool,
    check_choice,
    check_log_every_n_steps,
    check_number,
    check_rate,
)
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.stochastic_depth.layers import DropRateModule, find_drop_rate_modules
from lightning_reg.stochastic_depth.rates import ScheduledRates
from lightning_reg.stochastic_depth.schedules import (
    DEPTH_RULES,
    EARLY_MODES,
    TIME_SCHEDULES,
    DepthRule,
    TimeSchedule,
    _check_rule,
    _check_schedule,
    depth_rates,
)
from lightning_reg.stochastic_depth.schedules import make_time_schedule as _make_time_schedule

__all__ = ["StochasticDepthScheduler"]

_CUTOFF_UNITS = ("step", "epoch", "fraction")
_CUTOFF_SCHEDULES = ("warmup", "early", "late")

_NONE_FOUND = (
    "StochasticDepthScheduler found no drop-path module in {model}{dropout}. It schedules lightning_reg"
    " `DropPath`, `torchvision.ops.StochasticDepth`, timm `DropPath` and modules with a `drop_rate_attribute`"
    " class attribute, and with include_dropout=True every `nn.Dropout`. Insert DropPath into a model built"
    " without it with `lightning_reg.add_stochastic_depth(model, max_rate)` (torchvision ResNets, or your"
    " blocks via `branch_ends={{MyBlock: 'last_branch_layer'}}`). Note that timm builds `nn.Identity` instead"
    " of DropPath when `drop_path_rate=0` (the default): build the timm model with `drop_path_rate>0` (e.g."
    " `timm.create_model(name, drop_path_rate=0.1)`), then this callback can rescale or reschedule it."
)


def _resolve(value: Any, names: tuple[str, ...], what: str) -> Any:
    """Turn a dotted import path (as LightningCLI passes a callable from YAML) into the object."""
    if isinstance(value, str) and value not in names and "." in value:
        module_name, _, attr = value.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"Cannot import {what} {value!r}; choose one of {list(names)} or a callable"
            ) from err
        if not callable(obj):
            raise TypeError(f"{what} {value!r} is not callable")
        return obj
    return value


def _callable_name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", "callable")


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

    **What it finds** (in registration order, i.e. by depth): lightning_reg :class:`~lightning_reg.DropPath`
    and ``torchvision.ops.StochasticDepth`` (attribute ``p``), timm ``DropPath`` (attribute
    ``drop_prob``), and any module whose class defines ``drop_rate_attribute = "<name of its float rate
    attribute>"`` (the protocol for your own layers). Drop-path modules with the same parent module (e.g.
    timm ViT's ``drop_path1`` and ``drop_path2`` in one block) form one depth level and share one rate.
    With ``include_dropout=True`` every ``nn.Dropout`` (and ``Dropout1d/2d/3d``, ``AlphaDropout``,
    ``FeatureAlphaDropout``) is scheduled too, with its own target; a model with dropout and no drop-path
    module is then scheduled for its dropout alone.

    **Target rates**: with ``max_rate=None`` each module keeps the rate the model was built with as its
    target (e.g. timm's or torchvision's own depth rule) and only the time schedule is applied; with a
    ``max_rate``, targets come from ``rule`` over the ``L`` depth levels. Caveat: timm builds
    ``nn.Identity`` for blocks whose rate is 0 (the first block under its linear rule), so those blocks are
    not seen and ``L`` is one less than the model's depth.

    **Time schedule** (the multiplier of the targets at optimizer step ``t``, ``trainer.global_step``, of
    ``T = trainer.estimated_stepping_batches``): ``"constant"``, ``"warmup"`` (0 to target by ``cutoff``),
    ``"early"`` (Liu et al. 2023: target, decaying linearly (``early_mode="linear"``) or constant, until
    ``cutoff``, then 0), ``"late"`` (0 until ``cutoff``, then target) or a callable ``(t, T) -> multiplier``.

    **torch.compile**: with any schedule but ``"constant"`` the rates live in one float64 tensor on the
    model's device, updated in place (:class:`~lightning_reg.stochastic_depth.rates.ScheduledRates`):
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
        log_every_n_steps: logging interval (Lightning's rule); ``None`` uses the Trainer's; ``0`` disables.
        verbose: 0 quiet, 1 one line at fit start, 2 also the target rate of every depth level.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a rate outside ``[0, 1)``, an unknown rule, schedule, unit or mode, a missing cutoff, or
            an argument the chosen schedule does not use (``cutoff`` with ``"constant"``, ``early_mode``
            without ``"early"``, ``dropout_rate`` without ``include_dropout``).

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
        log_every_n_steps: int | None = None,
        verbose: int | bool = 1,
    ) -> None:
        super().__init__()
        self.max_rate = check_rate("max_rate", max_rate, none_ok=True)
        rule = _resolve(rule, DEPTH_RULES, "depth rule")
        schedule = _resolve(schedule, TIME_SCHEDULES, "time schedule")
        _check_rule(rule)
        _check_schedule(schedule)
        check_choice("cutoff_unit", cutoff_unit, _CUTOFF_UNITS)
        check_choice("early_mode", early_mode, EARLY_MODES)
        if schedule in _CUTOFF_SCHEDULES:
            if cutoff is None:
                raise TypeError(
                    f"`cutoff` must be a number for schedule {schedule!r} (where it switches); got None."
                )
            if cutoff_unit == "fraction":
                if not 0.0 <= check_number("cutoff", cutoff) <= 1.0:
                    raise ValueError(
                        f"`cutoff` with cutoff_unit='fraction' must be a number in [0, 1]; got {cutoff!r}."
                    )
            else:
                check_number("cutoff", cutoff, low=0)
                if not float(cutoff).is_integer():
                    raise ValueError(
                        f"`cutoff` in {cutoff_unit}s must be a whole number >= 0; got {cutoff!r}."
                    )
            if schedule == "early" and cutoff == 0:
                raise ValueError(
                    "`cutoff` must be > 0 for schedule 'early' (0 would never switch the rates on); got 0."
                )
        else:
            shown = _callable_name(schedule)
            if cutoff is not None:
                raise ValueError(
                    "`cutoff` is used only by the schedules 'warmup', 'early' and 'late'; got"
                    f" cutoff={cutoff!r} with schedule {shown!r}. Remove it, or choose one of those."
                )
            if cutoff_unit != "step":
                raise ValueError(
                    f"`cutoff_unit` is used only with a `cutoff`; got cutoff_unit={cutoff_unit!r} with"
                    f" schedule {shown!r}."
                )
        if early_mode != "linear" and schedule != "early":
            raise ValueError(
                f"`early_mode` is used only by the 'early' schedule; got early_mode={early_mode!r} with"
                f" schedule {_callable_name(schedule)!r}."
            )
        self.include_dropout = check_bool("include_dropout", include_dropout)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate, none_ok=True)
        if self.dropout_rate is not None and not include_dropout:
            raise ValueError(
                f"`dropout_rate` applies only with include_dropout=True; got dropout_rate={dropout_rate!r}"
                " with include_dropout=False."
            )
        self.rule = rule
        self.schedule = schedule
        self.cutoff = cutoff
        self.cutoff_unit = cutoff_unit
        self.early_mode = early_mode
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.verbose = check_verbose(verbose)

        # Filled at fit start; parallel lists, one entry per scheduled module.
        self._found: list[DropRateModule] = []
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

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            max_rate=self.max_rate,
            rule=_callable_name(self.rule),
            schedule=_callable_name(self.schedule),
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
        targets = self._drop_path_targets(drop_paths)
        for f in dropouts:
            targets.append(
                self.dropout_rate if self.dropout_rate is not None else float(getattr(f.module, f.attr))
            )
        self._target_rates = targets

    def _drop_path_targets(self, drop_paths: list[DropRateModule]) -> list[float]:
        """Target rate of each drop-path module: its own (``max_rate=None``) or the depth rule's."""
        if self.max_rate is None:
            return self._original_rates[: len(drop_paths)]
        level_rates = depth_rates(self._num_levels(), self.max_rate, self.rule)
        return [level_rates[f.level] for f in drop_paths]

    def _num_levels(self) -> int:
        return 1 + max((f.level for f in self._found if not f.is_dropout), default=-1)

    def _summary(self) -> str:
        parts = []
        if self._num_drop_path:
            classes = (getattr(type(f.module), "_lr_original", type(f.module)) for f in self._found)
            kinds = sorted({c.__name__ for c in list(classes)[: self._num_drop_path]})
            top = max(self._target_rates[: self._num_drop_path], default=0.0)
            parts.append(
                f"{self._num_drop_path} drop-path modules ({', '.join(kinds)}) in {self._num_levels()} depth"
                f" levels, max target {top:.4g}"
            )
        dropouts = len(self._found) - self._num_drop_path
        if dropouts:
            top = max(self._target_rates[self._num_drop_path :], default=0.0)
            parts.append(f"{dropouts} dropout modules, max target {top:.4g}")
        schedule = _callable_name(self.schedule)
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
        schedulers = [cb for cb in trainer.callbacks if isinstance(cb, StochasticDepthScheduler)]
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
        if callable(self.schedule):
            return self.schedule
        if self.schedule == "constant":
            return _make_time_schedule("constant")
        assert self.cutoff is not None
        if self.cutoff_unit == "step":
            cutoff = int(self.cutoff)
        elif self.cutoff_unit == "epoch":
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError("cutoff_unit='epoch' needs a dataloader with a known length; use 'step'")
            cutoff = int(self.cutoff) * math.ceil(batches / trainer.accumulate_grad_batches)
        else:
            if self._total_steps < 0:
                raise ValueError(
                    "cutoff_unit='fraction' needs a finite training length (set max_epochs or max_steps);"
                    " use cutoff_unit='step'"
                )
            cutoff = round(self.cutoff * self._total_steps)
        if self._total_steps >= 0 and cutoff > self._total_steps:
            rank_zero_warn(
                f"StochasticDepthScheduler: the {self.schedule!r} cutoff ({cutoff} steps) is beyond the"
                f" training length ({self._total_steps} optimizer steps); the schedule will not reach"
                " its cutoff."
            )
        if self.schedule == "early":
            cutoff = max(cutoff, 1)  # a tiny fraction still keeps the rates on for step 0
        return _make_time_schedule(self.schedule, cutoff, self.early_mode)

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
                f"Time schedule {_callable_name(self.schedule)!r} returned {multiplier!r} at step {step};"
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
