"""Depth rules and time schedules for stochastic depth (and dropout): pure functions and validated specs.

Two independent pieces decide the drop rate of block ``l`` (0-based, of ``L`` blocks) at optimizer step ``t``:

* a **depth rule** gives the target rate per block from a maximum rate:
  ``"linear"`` (timm: ``torch.linspace(0, max_rate, L)``, the first block gets 0),
  ``"huang"`` (Huang et al. 2016: ``p_l = l / L * max_rate`` for ``l = 1..L``, the last block gets
  ``max_rate``, none gets 0), ``"uniform"`` (every block ``max_rate``) or a callable
  ``(num_blocks, max_rate) -> sequence of rates``;
* a **time schedule** gives a multiplier in ``[0, 1]`` of those targets at step ``t`` of ``T``:
  ``"constant"`` (1), ``"warmup"`` (``min(1, t / cutoff)``), ``"early"`` (Liu et al. 2023 early dropout:
  ``1 - t / cutoff`` (``mode="linear"``) or 1 (``mode="constant"``) before the cutoff, 0 from it),
  ``"late"`` (0 before the cutoff, 1 from it) or a callable ``(step, total_steps) -> multiplier``.

The rate in use is ``target_rate * multiplier``. ``DepthRuleSpec`` and ``TimeScheduleSpec`` are
the two pieces as settings (small frozen dataclasses that validate themselves at construction), as
``StochasticDepthScheduler`` takes them.

Example:
    >>> linear_depth_rates(3, 0.2)
    [0.0, 0.10000000149011612, 0.20000000298023224]
    >>> early_schedule(5, cutoff=10), early_schedule(10, cutoff=10)
    (0.5, 0.0)
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lightning_reg._shared.validation import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_number,
    check_rate,
)

__all__ = [
    "DEPTH_RULES",
    "TIME_SCHEDULES",
    "DepthRule",
    "DepthRuleSpec",
    "TimeSchedule",
    "TimeScheduleSpec",
    "constant_schedule",
    "depth_rates",
    "early_schedule",
    "huang_depth_rates",
    "late_schedule",
    "linear_depth_rates",
    "make_time_schedule",
    "uniform_depth_rates",
    "warmup_schedule",
]

DepthRule = Callable[[int, float], Sequence[float]]
"""``(num_blocks, max_rate) -> one rate per block`` (shallowest first)."""

TimeSchedule = Callable[[int, int], float]
"""``(step, total_steps) -> multiplier in [0, 1]`` of the target rates."""

DEPTH_RULES = ("linear", "huang", "uniform")
TIME_SCHEDULES = ("constant", "warmup", "early", "late")
EARLY_MODES = ("linear", "constant")
CUTOFF_UNITS = ("step", "epoch", "fraction")
_CUTOFF_SCHEDULES = ("warmup", "early", "late")


def _check_rule(rule: object) -> None:
    """Check a depth rule: one of ``DEPTH_RULES`` or a callable.

    Example:
        >>> _check_rule("huang")
        >>> _check_rule("cosine")
        Traceback (most recent call last):
        ...
        ValueError: `rule` must be one of 'linear', 'huang', 'uniform' or a callable; got 'cosine'.
    """
    _check_named_or_callable("rule", rule, DEPTH_RULES)


def _check_schedule(schedule: object) -> None:
    """Check a time schedule: one of ``TIME_SCHEDULES`` or a callable.

    Example:
        >>> _check_schedule(lambda step, total: 1.0)
    """
    _check_named_or_callable("schedule", schedule, TIME_SCHEDULES)


def _check_named_or_callable(name: str, value: object, names: tuple[str, ...]) -> None:
    listed = ", ".join(repr(n) for n in names)
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"`{name}` must be one of {listed} or a callable; got {value!r}.")
        return
    check_callable(name, value, f"one of {listed} or a callable")


def _check_num_blocks(num_blocks: int) -> int:
    return int(check_int("num_blocks", num_blocks, low=0))


def linear_depth_rates(num_blocks: int, max_rate: float) -> list[float]:
    """Return timm's rule: rates evenly spaced from 0 (first block) to ``max_rate`` (last block).

    Computed exactly as timm does (``torch.linspace`` in float32, then ``.item()``), so the rates are
    bit-identical to those of a timm model built with ``drop_path_rate=max_rate``.

    Args:
        num_blocks: number of blocks ``L``.
        max_rate: rate of the deepest block, in ``[0, 1)``.

    Returns:
        ``L`` rates, shallowest block first.

    Example:
        >>> linear_depth_rates(2, 0.5)
        [0.0, 0.5]
    """
    _check_num_blocks(num_blocks)
    max_rate = check_rate("max_rate", max_rate)
    return [x.item() for x in torch.linspace(0, max_rate, num_blocks, device="cpu")]


def huang_depth_rates(num_blocks: int, max_rate: float) -> list[float]:
    """Huang et al. (2016) linear decay rule: ``p_l = l / L * max_rate`` for blocks ``l = 1..L``.

    Unlike [`linear_depth_rates`][lightning_reg.stochastic_depth.rate_rules.linear_depth_rates] the first
    block already gets ``max_rate / L``.

    Args:
        num_blocks: number of blocks ``L``.
        max_rate: rate of the deepest block ``p_L``, in ``[0, 1)``.

    Returns:
        ``L`` rates, shallowest block first.

    Example:
        >>> huang_depth_rates(4, 0.4)
        [0.1, 0.2, 0.30000000000000004, 0.4]
    """
    _check_num_blocks(num_blocks)
    max_rate = check_rate("max_rate", max_rate)
    return [level / num_blocks * max_rate for level in range(1, num_blocks + 1)]


def uniform_depth_rates(num_blocks: int, max_rate: float) -> list[float]:
    """Every block gets ``max_rate``.

    Args:
        num_blocks: number of blocks ``L``.
        max_rate: the rate of every block, in ``[0, 1)``.

    Returns:
        ``L`` copies of ``max_rate``.

    Example:
        >>> uniform_depth_rates(2, 0.1)
        [0.1, 0.1]
    """
    _check_num_blocks(num_blocks)
    max_rate = check_rate("max_rate", max_rate)
    return [max_rate] * num_blocks


_DEPTH_RULE_FNS: dict[str, Callable[[int, float], list[float]]] = {
    "linear": linear_depth_rates,
    "huang": huang_depth_rates,
    "uniform": uniform_depth_rates,
}


def depth_rates(num_blocks: int, max_rate: float, rule: str | DepthRule = "linear") -> list[float]:
    """Per-block target rates by a named rule or a callable, validated.

    Args:
        num_blocks: number of blocks ``L``.
        max_rate: the rule's maximum rate, in ``[0, 1)``.
        rule: ``"linear"``, ``"huang"``, ``"uniform"`` or a callable ``(num_blocks, max_rate) -> rates``.

    Returns:
        ``L`` rates in ``[0, 1)``, shallowest block first.

    Raises:
        ValueError: unknown rule name, a callable returning the wrong number of rates or a rate outside
            ``[0, 1)``.

    Example:
        >>> depth_rates(3, 0.3, "uniform")
        [0.3, 0.3, 0.3]
        >>> depth_rates(2, 0.3, lambda n, p: [p / 2] * n)
        [0.15, 0.15]
    """
    _check_num_blocks(num_blocks)
    max_rate = check_rate("max_rate", max_rate)
    _check_rule(rule)
    if isinstance(rule, str):
        return _DEPTH_RULE_FNS[rule](num_blocks, max_rate)
    rates = [float(r) for r in rule(num_blocks, max_rate)]
    if len(rates) != num_blocks:
        name = getattr(rule, "__name__", rule)
        raise ValueError(f"Depth rule {name!r} returned {len(rates)} rates for {num_blocks} blocks")
    for i, r in enumerate(rates):
        check_rate(f"rate of block {i} from depth rule {getattr(rule, '__name__', rule)!r}", r)
    return rates


def constant_schedule(step: int, total_steps: int) -> float:
    """Return 1 always: the target rates from the first step to the last.

    Args:
        step: current optimizer step (unused).
        total_steps: number of optimizer steps of the run (unused).

    Example:
        >>> constant_schedule(7, 100)
        1.0
    """
    return 1.0


def warmup_schedule(step: int, cutoff: int) -> float:
    """Linear ramp from 0 at step 0 to 1 at step ``cutoff``, then 1.

    Args:
        step: current optimizer step.
        cutoff: number of warm-up steps (0 means no warm-up).

    Example:
        >>> warmup_schedule(25, 100), warmup_schedule(500, 100)
        (0.25, 1.0)
    """
    if step >= cutoff:
        return 1.0
    return step / cutoff


def early_schedule(step: int, cutoff: int, mode: Literal["linear", "constant"] = "linear") -> float:
    """Early dropout (Liu et al. 2023): on before ``cutoff``, off (0) from it.

    Args:
        step: current optimizer step.
        cutoff: first step with the rate switched off.
        mode: ``"linear"`` decays the multiplier as ``1 - step / cutoff``; ``"constant"`` keeps it at 1.

    Example:
        >>> early_schedule(3, 4), early_schedule(3, 4, mode="constant"), early_schedule(4, 4)
        (0.25, 1.0, 0.0)
    """
    if step >= cutoff:
        return 0.0
    return 1.0 - step / cutoff if mode == "linear" else 1.0


def late_schedule(step: int, cutoff: int) -> float:
    """Late dropout: off (0) before ``cutoff``, the target rates from it.

    Args:
        step: current optimizer step.
        cutoff: first step with the rate switched on.

    Example:
        >>> late_schedule(9, 10), late_schedule(10, 10)
        (0.0, 1.0)
    """
    return 1.0 if step >= cutoff else 0.0


def _warmup(step: int, total_steps: int, cutoff: int) -> float:
    return warmup_schedule(step, cutoff)


def _early(step: int, total_steps: int, cutoff: int, mode: Literal["linear", "constant"]) -> float:
    return early_schedule(step, cutoff, mode)


def _late(step: int, total_steps: int, cutoff: int) -> float:
    return late_schedule(step, cutoff)


def make_time_schedule(
    schedule: str | TimeSchedule,
    cutoff: int | None = None,
    mode: Literal["linear", "constant"] = "linear",
) -> TimeSchedule:
    """Bind a named schedule and its cutoff into a ``(step, total_steps) -> multiplier`` function.

    Args:
        schedule: ``"constant"``, ``"warmup"``, ``"early"``, ``"late"`` or a callable
            ``(step, total_steps) -> multiplier`` (returned unchanged).
        cutoff: the step at which ``"warmup"`` ends / ``"early"`` switches off / ``"late"`` switches on.
            Required for those three, ignored otherwise.
        mode: ``"linear"`` or ``"constant"``; only used by ``"early"``.

    Returns:
        A picklable function ``(step, total_steps) -> float``.

    Example:
        >>> f = make_time_schedule("warmup", cutoff=4)
        >>> [f(s, 8) for s in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    _check_schedule(schedule)
    if callable(schedule):
        return schedule
    check_choice("early_mode", mode, EARLY_MODES)
    if schedule == "constant":
        return constant_schedule
    if cutoff is None:
        raise TypeError(f"`cutoff` must be an int >= 0 (steps) for schedule {schedule!r}; got None.")
    check_int("cutoff", cutoff, low=0)
    if schedule == "warmup":
        return functools.partial(_warmup, cutoff=cutoff)
    if schedule == "early":
        if cutoff == 0:
            raise ValueError(
                "`cutoff` must be an int >= 1 for schedule 'early' (0 would switch the rates off from the"
                " start); got 0."
            )
        return functools.partial(_early, cutoff=cutoff, mode=mode)
    return functools.partial(_late, cutoff=cutoff)


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


@dataclass(frozen=True)
class DepthRuleSpec:
    """Where the target rate of every drop-path module comes from; validated at construction.

    Three ways: ``max_rate=None`` keeps each module's own rate (the model's own depth profile, e.g. timm's
    or torchvision's); a ``max_rate`` with ``rule`` gives the rule's rates over the depth levels; a
    ``max_rate`` with ``scale_model_rates=True`` keeps the model's own profile and scales it so that its
    largest rate becomes ``max_rate`` (a model whose rates are all 0 has no profile and gets ``rule``).

    Args:
        max_rate: the largest target rate, in ``[0, 1)``, or ``None`` for the model's own rates.
        rule: ``"linear"`` (timm), ``"huang"``, ``"uniform"``, a callable ``(num_levels, max_rate) -> rates``
            or its dotted import path (for YAML); used with ``max_rate``.
        scale_model_rates: scale the model's own rates to ``max_rate`` instead of applying ``rule``.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a rate outside ``[0, 1)``, an unknown rule, or ``scale_model_rates`` without
            ``max_rate``.

    Example:
        >>> DepthRuleSpec(0.3, "linear").targets(own_rates=[0.0, 0.0, 0.0], levels=[0, 1, 2])
        [0.0, 0.15000000596046448, 0.30000001192092896]
        >>> DepthRuleSpec(0.3, scale_model_rates=True).targets(own_rates=[0.05, 0.1], levels=[0, 1])
        [0.15, 0.3]
        >>> DepthRuleSpec().targets(own_rates=[0.05, 0.1], levels=[0, 1])
        [0.05, 0.1]
    """

    max_rate: float | None = None
    rule: str | DepthRule = "linear"
    scale_model_rates: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "max_rate", check_rate("max_rate", self.max_rate, none_ok=True))
        set_(self, "rule", _resolve(self.rule, DEPTH_RULES, "depth rule"))
        _check_rule(self.rule)
        check_bool("scale_model_rates", self.scale_model_rates)
        if self.scale_model_rates and self.max_rate is None:
            raise ValueError(
                "`scale_model_rates=True` scales the model's own rates to `max_rate`; got max_rate=None. Set"
                " `max_rate`, or leave scale_model_rates=False to keep the model's rates as they are."
            )

    @property
    def rule_name(self) -> str:
        """The rule's name, or the callable's ``__name__``."""
        return _callable_name(self.rule)

    def targets(self, own_rates: Sequence[float], levels: Sequence[int]) -> list[float]:
        """Return the target rate of every drop-path module.

        Args:
            own_rates: each module's rate as the model was built.
            levels: each module's depth level (0-based; modules sharing a parent share a level).

        Example:
            >>> DepthRuleSpec(0.2, "uniform").targets([0.0, 0.0], [0, 0])
            [0.2, 0.2]
        """
        if self.max_rate is None:
            return [float(r) for r in own_rates]
        top = max(own_rates, default=0.0)
        if self.scale_model_rates and top > 0.0:
            return [self.max_rate * rate / top for rate in own_rates]
        level_rates = depth_rates(1 + max(levels, default=-1), self.max_rate, self.rule)
        return [level_rates[level] for level in levels]


@dataclass(frozen=True)
class TimeScheduleSpec:
    """The time schedule of the target rates' multiplier, with its cutoff; validated at construction.

    Args:
        schedule: ``"constant"``, ``"warmup"``, ``"early"``, ``"late"``, a callable
            ``(step, total_steps) -> multiplier`` or its dotted import path (for YAML).
        cutoff: where ``"warmup"`` ends / ``"early"`` switches off / ``"late"`` switches on, in
            ``cutoff_unit``; required by those schedules and refused by the others.
        cutoff_unit: ``"step"`` (optimizer steps), ``"epoch"`` or ``"fraction"`` (of the training length).
        early_mode: ``"linear"`` or ``"constant"``; only for ``"early"``.

    Raises:
        TypeError: an argument of the wrong type, or a missing ``cutoff``.
        ValueError: an unknown schedule, unit or mode, a cutoff out of range, or an argument the schedule
            does not use.

    Example:
        >>> spec = TimeScheduleSpec("warmup", cutoff=0.5, cutoff_unit="fraction")
        >>> f = spec.function(spec.cutoff_steps(steps_per_epoch=None, total_steps=8))
        >>> [f(t, 8) for t in (0, 2, 4, 6)]
        [0.0, 0.5, 1.0, 1.0]
    """

    schedule: str | TimeSchedule = "constant"
    cutoff: float | None = None
    cutoff_unit: Literal["step", "epoch", "fraction"] = "step"
    early_mode: Literal["linear", "constant"] = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", _resolve(self.schedule, TIME_SCHEDULES, "time schedule"))
        _check_schedule(self.schedule)
        check_choice("cutoff_unit", self.cutoff_unit, CUTOFF_UNITS)
        check_choice("early_mode", self.early_mode, EARLY_MODES)
        if self.schedule in _CUTOFF_SCHEDULES:
            self._check_cutoff()
        else:
            self._check_no_cutoff()
        if self.early_mode != "linear" and self.schedule != "early":
            raise ValueError(
                f"`early_mode` is used only by the 'early' schedule; got early_mode={self.early_mode!r} with"
                f" schedule {self.schedule_name!r}."
            )

    def _check_cutoff(self) -> None:
        cutoff, unit = self.cutoff, self.cutoff_unit
        if cutoff is None:
            raise TypeError(
                f"`cutoff` must be a number for schedule {self.schedule!r} (where it switches); got None."
            )
        if unit == "fraction":
            if not 0.0 <= check_number("cutoff", cutoff) <= 1.0:
                raise ValueError(
                    f"`cutoff` with cutoff_unit='fraction' must be a number in [0, 1]; got {cutoff!r}."
                )
        else:
            check_number("cutoff", cutoff, low=0)
            if not float(cutoff).is_integer():
                raise ValueError(f"`cutoff` in {unit}s must be a whole number >= 0; got {cutoff!r}.")
        if self.schedule == "early" and cutoff == 0:
            raise ValueError(
                "`cutoff` must be > 0 for schedule 'early' (0 would never switch the rates on); got 0."
            )

    def _check_no_cutoff(self) -> None:
        if self.cutoff is not None:
            raise ValueError(
                "`cutoff` is used only by the schedules 'warmup', 'early' and 'late'; got"
                f" cutoff={self.cutoff!r} with schedule {self.schedule_name!r}. Remove it, or choose one of"
                " those."
            )
        if self.cutoff_unit != "step":
            raise ValueError(
                f"`cutoff_unit` is used only with a `cutoff`; got cutoff_unit={self.cutoff_unit!r} with"
                f" schedule {self.schedule_name!r}."
            )

    @property
    def schedule_name(self) -> str:
        """The schedule's name, or the callable's ``__name__``."""
        return _callable_name(self.schedule)

    @property
    def needs_cutoff(self) -> bool:
        """Whether the schedule switches at a cutoff (``"warmup"``, ``"early"``, ``"late"``)."""
        return self.schedule in _CUTOFF_SCHEDULES

    def cutoff_steps(self, steps_per_epoch: int | None, total_steps: int) -> int:
        """Return the cutoff in optimizer steps.

        Args:
            steps_per_epoch: optimizer steps per epoch, or ``None`` if unknown (an iterable dataset).
            total_steps: optimizer steps of the whole run, ``-1`` if unknown.

        Raises:
            ValueError: the unit needs a length that is unknown.

        Example:
            >>> TimeScheduleSpec("late", cutoff=2, cutoff_unit="epoch").cutoff_steps(5, -1)
            10
        """
        assert self.cutoff is not None, "only schedules with a cutoff have cutoff steps"
        if self.cutoff_unit == "step":
            return int(self.cutoff)
        if self.cutoff_unit == "epoch":
            if steps_per_epoch is None:
                raise ValueError("cutoff_unit='epoch' needs a dataloader with a known length; use 'step'")
            return int(self.cutoff) * steps_per_epoch
        if total_steps < 0:
            raise ValueError(
                "cutoff_unit='fraction' needs a finite training length (set max_epochs or max_steps);"
                " use cutoff_unit='step'"
            )
        return round(self.cutoff * total_steps)

    def function(self, cutoff_steps: int | None = None) -> TimeSchedule:
        """Return the ``(step, total_steps) -> multiplier`` function, its cutoff bound.

        Args:
            cutoff_steps: the cutoff in optimizer steps (``cutoff_steps``); needed by cutoff schedules.

        Example:
            >>> TimeScheduleSpec("early", cutoff=4).function(4)(2, 100)
            0.5
        """
        if not self.needs_cutoff:
            return make_time_schedule(self.schedule)
        if cutoff_steps is None:
            raise TypeError(f"schedule {self.schedule_name!r} needs `cutoff_steps`; got None.")
        if self.schedule == "early":
            cutoff_steps = max(cutoff_steps, 1)  # a tiny fraction still keeps the rates on for step 0
        return make_time_schedule(self.schedule, cutoff_steps, self.early_mode)
