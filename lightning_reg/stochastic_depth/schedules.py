"""Depth rules and time schedules for stochastic depth (and dropout), as small pure functions.

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

The rate in use is ``target_rate * multiplier``.

Example:
    >>> linear_depth_rates(3, 0.2)
    [0.0, 0.10000000149011612, 0.20000000298023224]
    >>> early_schedule(5, cutoff=10), early_schedule(10, cutoff=10)
    (0.5, 0.0)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from lightning_reg._shared.validation import check_callable, check_choice, check_int, check_rate

__all__ = [
    "DEPTH_RULES",
    "TIME_SCHEDULES",
    "DepthRule",
    "TimeSchedule",
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


def _check_rule(rule: object) -> None:
    """Check a depth rule: one of :data:`DEPTH_RULES` or a callable.

    Example:
        >>> _check_rule("huang")
        >>> _check_rule("cosine")
        Traceback (most recent call last):
        ...
        ValueError: `rule` must be one of 'linear', 'huang', 'uniform' or a callable; got 'cosine'.
    """
    _check_named_or_callable("rule", rule, DEPTH_RULES)


def _check_schedule(schedule: object) -> None:
    """Check a time schedule: one of :data:`TIME_SCHEDULES` or a callable.

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

    Unlike :func:`linear_depth_rates` the first block already gets ``max_rate / L``.

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


_DEPTH_RULE_FNS: dict[str, DepthRule] = {
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
