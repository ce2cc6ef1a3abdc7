"""``StochasticDepthScheduler``: drop-path (and dropout) rates by depth rule and time schedule.

A thin Lightning shell over :mod:`lightning_reg.stochastic_depth.layers` (finding drop-path modules) and
:mod:`lightning_reg.stochastic_depth.schedules` (depth rules and time schedules). Per optimizer step it
does attribute writes only (no tensor work, no host-device sync), and nothing at all when the schedule's
multiplier did not change.

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

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_reg.stochastic_depth.layers import DropRateModule, find_drop_rate_modules
from lightning_reg.stochastic_depth.schedules import (
    DEPTH_RULES,
    TIME_SCHEDULES,
    DepthRule,
    TimeSchedule,
    check_rate,
    depth_rates,
)
from lightning_reg.stochastic_depth.schedules import make_time_schedule as _make_time_schedule

__all__ = ["StochasticDepthScheduler"]

_CUTOFF_UNITS = ("step", "epoch", "fraction")

_NONE_FOUND = (
    "StochasticDepthScheduler found no drop-path module in {model}. It schedules lightning_reg `DropPath`,"
    " `torchvision.ops.StochasticDepth`, timm `DropPath` and modules with a `drop_rate_attribute` class"
    " attribute{dropout}. Insert DropPath into a model built without it with"
    " `lightning_reg.add_stochastic_depth(model, max_rate)` (torchvision ResNets, or your blocks via"
    " `branch_ends={{MyBlock: 'last_branch_layer'}}`). Note that timm builds `nn.Identity` instead of"
    " DropPath when `drop_path_rate=0` (the default): build the timm model with `drop_path_rate>0` (e.g."
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


class StochasticDepthScheduler(Callback):
    """Set the rate of every drop-path module by a depth rule and a time schedule over optimizer steps.

    **What it finds** (in registration order, i.e. by depth): lightning_reg :class:`~lightning_reg.DropPath`
    and ``torchvision.ops.StochasticDepth`` (attribute ``p``), timm ``DropPath`` (attribute
    ``drop_prob``), and any module whose class defines ``drop_rate_attribute = "<name of its float rate
    attribute>"`` (the protocol for your own layers). Drop-path modules with the same parent module (e.g.
    timm ViT's ``drop_path1`` and ``drop_path2`` in one block) form one depth level and share one rate.
    With ``include_dropout=True`` every ``nn.Dropout`` (and ``Dropout1d/2d/3d``, ``AlphaDropout``) is
    scheduled too, with its own target.

    **Target rates**: with ``max_rate=None`` each module keeps the rate the model was built with as its
    target (e.g. timm's or torchvision's own depth rule) and only the time schedule is applied; with a
    ``max_rate``, targets come from ``rule`` over the ``L`` depth levels. Caveat: timm builds
    ``nn.Identity`` for blocks whose rate is 0 (the first block under its linear rule), so those blocks are
    not seen and ``L`` is one less than the model's depth.

    **Time schedule** (the multiplier of the targets at optimizer step ``t``, ``trainer.global_step``, of
    ``T = trainer.estimated_stepping_batches``): ``"constant"``, ``"warmup"`` (0 to target by ``cutoff``),
    ``"early"`` (Liu et al. 2023: target, decaying linearly (``early_mode="linear"``) or constant, until
    ``cutoff``, then 0), ``"late"`` (0 until ``cutoff``, then target) or a callable ``(t, T) -> multiplier``.

    At fit start (rank zero) it reports what it found and the target rate per level; at fit end (and on an
    exception) it restores the rates the model had. The current maximum rate is written to the loggers as
    ``stochastic_depth/max_rate`` (and ``stochastic_depth/dropout_max_rate``) every ``log_every_n_steps``.
    The state (step, original and target rates) is saved in checkpoints; a resumed run takes the
    checkpoint's target rates and continues the schedule exactly. Rates are plain Python attributes
    computed from the global step, identical on all ranks; per-sample (``"row"``) drop path keeps every
    parameter in the graph, so DDP needs no ``find_unused_parameters``.

    Args:
        max_rate: maximum rate of the depth rule, in ``[0, 1)``; ``None`` keeps the model's own rates as
            targets.
        rule: depth rule, ``"linear"`` (timm), ``"huang"``, ``"uniform"`` or a callable
            ``(num_levels, max_rate) -> rates`` (or its dotted import path, for YAML); used only with
            ``max_rate``.
        schedule: ``"constant"``, ``"warmup"``, ``"early"``, ``"late"`` or a callable
            ``(step, total_steps) -> multiplier`` (or its dotted import path, for YAML).
        cutoff: where ``"warmup"`` ends / ``"early"`` switches off / ``"late"`` switches on, in
            ``cutoff_unit``; required for those schedules.
        cutoff_unit: ``"step"`` (optimizer steps), ``"epoch"`` (multiplied by the optimizer steps per
            epoch) or ``"fraction"`` (of ``trainer.estimated_stepping_batches``).
        early_mode: ``"linear"`` or ``"constant"`` for the ``"early"`` schedule.
        include_dropout: also schedule every dropout module.
        dropout_rate: target rate of every dropout module, in ``[0, 1)``; ``None`` keeps each module's own.
        log_every_n_steps: logging interval in optimizer steps; ``None`` uses the Trainer's; ``0`` disables.

    Raises:
        ValueError: a rate outside ``[0, 1)``, an unknown rule, schedule, unit or mode, or a missing cutoff.

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
    ) -> None:
        super().__init__()
        self.max_rate = None if max_rate is None else check_rate(max_rate, "max_rate")
        rule = _resolve(rule, DEPTH_RULES, "depth rule")
        schedule = _resolve(schedule, TIME_SCHEDULES, "time schedule")
        if isinstance(rule, str) and rule not in DEPTH_RULES:
            raise ValueError(
                f"Unknown depth rule {rule!r}; choose one of {list(DEPTH_RULES)} or pass a callable"
            )
        if not isinstance(rule, str) and not callable(rule):
            raise TypeError(f"`rule` must be one of {list(DEPTH_RULES)} or a callable, got {rule!r}")
        if isinstance(schedule, str) and schedule not in TIME_SCHEDULES:
            raise ValueError(
                f"Unknown time schedule {schedule!r}; choose one of {list(TIME_SCHEDULES)} or pass a callable"
            )
        if not isinstance(schedule, str) and not callable(schedule):
            raise TypeError(
                f"`schedule` must be one of {list(TIME_SCHEDULES)} or a callable, got {schedule!r}"
            )
        if cutoff_unit not in _CUTOFF_UNITS:
            raise ValueError(f"Unknown `cutoff_unit` {cutoff_unit!r}; choose one of {list(_CUTOFF_UNITS)}")
        if early_mode not in ("linear", "constant"):
            raise ValueError(f"Unknown `early_mode` {early_mode!r}; choose 'linear' or 'constant'")
        if schedule in ("warmup", "early", "late"):
            if cutoff is None or isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
                raise ValueError(f"Schedule {schedule!r} needs a numeric `cutoff`, got {cutoff!r}")
            if cutoff_unit == "fraction" and not 0.0 <= cutoff <= 1.0:
                raise ValueError(f"`cutoff` with cutoff_unit='fraction' must be in [0, 1], got {cutoff!r}")
            if cutoff_unit != "fraction" and (cutoff < 0 or cutoff != int(cutoff)):
                raise ValueError(f"`cutoff` in {cutoff_unit}s must be a non-negative integer, got {cutoff!r}")
            if schedule == "early" and cutoff <= 0:
                raise ValueError(
                    f"Schedule 'early' needs `cutoff` > 0 (0 would never switch the rates on), got {cutoff!r}"
                )
        if dropout_rate is not None:
            dropout_rate = check_rate(dropout_rate, "dropout_rate")
        if log_every_n_steps is not None and (isinstance(log_every_n_steps, bool) or log_every_n_steps < 0):
            raise ValueError(
                f"`log_every_n_steps` must be None or a non-negative int, got {log_every_n_steps!r}"
            )
        self.rule = rule
        self.schedule = schedule
        self.cutoff = cutoff
        self.cutoff_unit = cutoff_unit
        self.early_mode = early_mode
        self.include_dropout = include_dropout
        self.dropout_rate = dropout_rate
        self.log_every_n_steps = log_every_n_steps

        # Filled at fit start; parallel lists, one entry per scheduled module.
        self._found: list[DropRateModule] = []
        self._modules: list[nn.Module] = []
        self._attrs: list[str] = []
        # Per-step write plan: plain instance attributes are written straight into the module's __dict__
        # (nn.Module.__setattr__ costs ~1.5 us per call); properties and other descriptors use setattr.
        self._fast_plan: list[tuple[dict[str, Any], str, float]] = []
        self._slow_plan: list[tuple[nn.Module, str, float]] = []
        self._original_rates: list[float] = []
        self._target_rates: list[float] = []
        self._num_drop_path = 0
        self._schedule_fn: TimeSchedule | None = None
        self._total_steps = 0
        self._step = -1
        self._multiplier: float | None = None
        self._loaded: dict[str, Any] | None = None
        self._log_every = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            max_rate=self.max_rate,
            rule=self.rule if isinstance(self.rule, str) else getattr(self.rule, "__name__", "callable"),
            schedule=self.schedule
            if isinstance(self.schedule, str)
            else getattr(self.schedule, "__name__", "callable"),
            include_dropout=self.include_dropout,
        )

    # ------------------------------------------------------------------ discovery
    def _discover(self, model: nn.Module) -> None:
        found = find_drop_rate_modules(model, include_dropout=self.include_dropout)
        drop_paths = [f for f in found if not f.is_dropout]
        if not drop_paths:
            dropout = " (and dropout modules, since include_dropout=True)" if self.include_dropout else ""
            raise ValueError(_NONE_FOUND.format(model=type(model).__name__, dropout=dropout))
        dropouts = [f for f in found if f.is_dropout]
        self._found = drop_paths + dropouts
        self._num_drop_path = len(drop_paths)
        self._modules = [f.module for f in self._found]
        self._attrs = [f.attr for f in self._found]
        self._original_rates = [float(getattr(f.module, f.attr)) for f in self._found]
        if self.max_rate is None:
            targets = self._original_rates[: len(drop_paths)]
        else:
            level_rates = depth_rates(self._num_levels(), self.max_rate, self.rule)
            targets = [level_rates[f.level] for f in drop_paths]
        for f in dropouts:
            targets.append(
                self.dropout_rate if self.dropout_rate is not None else float(getattr(f.module, f.attr))
            )
        self._target_rates = targets
        self._build_plan()

    def _build_plan(self) -> None:
        self._fast_plan, self._slow_plan = [], []
        for module, attr, target in zip(self._modules, self._attrs, self._target_rates):
            descriptor = getattr(type(module), attr, None)
            if attr in vars(module) and not hasattr(descriptor, "__set__"):
                self._fast_plan.append((vars(module), attr, target))
            else:
                self._slow_plan.append((module, attr, target))

    def _num_levels(self) -> int:
        return 1 + max(f.level for f in self._found if not f.is_dropout)

    def _summary(self) -> str:
        kinds = sorted({type(m).__name__ for m in self._modules[: self._num_drop_path]})
        lines = [
            f"StochasticDepthScheduler: {self._num_drop_path} drop-path modules ({', '.join(kinds)}) in"
            f" {self._num_levels()} depth levels; schedule={self._schedule_name()}"
            + (f", cutoff={self.cutoff} {self.cutoff_unit}" if self.cutoff is not None else "")
        ]
        shown: set[int] = set()
        for f, target in zip(self._found, self._target_rates):
            if f.is_dropout:
                lines.append(f"  dropout {f.name}: target {target:.4g}")
            elif f.level not in shown:
                shown.add(f.level)
                lines.append(f"  level {f.level} ({f.name}): target {target:.4g}")
        return "\n".join(lines)

    def _schedule_name(self) -> str:
        return (
            self.schedule
            if isinstance(self.schedule, str)
            else getattr(self.schedule, "__name__", "callable")
        )

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._discover(pl_module)
        self._step = -1
        self._multiplier = None
        rank_zero_info(self._summary())

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is not None:
            self._adopt_loaded_state(self._loaded)
            self._loaded = None
        total = trainer.estimated_stepping_batches
        self._total_steps = int(total) if math.isfinite(total) and total >= 0 else -1
        self._schedule_fn = self._build_schedule(trainer)
        interval = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        self._log_every = interval if trainer.loggers else 0
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
        if trainer.global_step != self._step:
            self._update(trainer)

    def _update(self, trainer: Trainer) -> None:
        step = trainer.global_step
        self._step = step
        assert self._schedule_fn is not None
        multiplier = float(self._schedule_fn(step, self._total_steps))
        if multiplier != self._multiplier:
            if not 0.0 <= multiplier <= 1.0:
                raise ValueError(
                    f"Time schedule {self.schedule!r} returned {multiplier!r} at step {step}; need [0, 1]"
                )
            self._multiplier = multiplier
            for attrs, attr, target in self._fast_plan:
                attrs[attr] = target * multiplier
            for module, attr, target in self._slow_plan:
                setattr(module, attr, target * multiplier)
        if self._log_every and step % self._log_every == 0:
            metrics = {"stochastic_depth/max_rate": self.current_max_rate()}
            if self._num_drop_path < len(self._modules):
                metrics["stochastic_depth/dropout_max_rate"] = self.current_max_rate(dropout=True)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

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

    def _restore(self) -> None:
        for module, attr, rate in zip(self._modules, self._attrs, self._original_rates):
            setattr(module, attr, rate)
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
        self._build_plan()
        self._step = -1  # force a rate update at the first batch of the resumed run
