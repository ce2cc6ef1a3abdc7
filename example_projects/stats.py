"""Paired comparisons over seeds: mean difference with a 95 % Student-t confidence interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95 % quantiles of Student's t (0.975 one-sided) for 1..30 degrees of freedom, then 40, 60, 120.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_T975_LARGE = ((40, 2.0211), (60, 2.0003), (120, 1.9799))


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (conservative between table rows).

    Example:
        >>> t_quantile_975(4)
        2.7764
    """
    if df < 1:
        raise ValueError(f"`df` must be an int >= 1; got {df!r}.")
    if df <= len(_T975):
        return _T975[df - 1]
    value = _T975[-1]
    for d, t in _T975_LARGE:
        if df >= d:
            value = t
    return value


@dataclass(frozen=True)
class PairedDiff:
    """Mean of paired differences ``a_i - b_i`` with its 95 % t-interval.

    Example:
        >>> d = paired_diff([0.90, 0.92, 0.91], [0.88, 0.90, 0.90])
        >>> round(d.mean, 4), d.excludes_zero
        (0.0167, True)
    """

    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below zero."""
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.high - self.low) / 2

    def pp(self) -> str:
        """``+1.2 pp [+0.4, +2.0]`` for accuracy differences (fractions shown in percentage points)."""
        return f"{100 * self.mean:+.1f} pp [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def paired_diff(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """Mean of ``a_i - b_i`` over pairs (e.g. seeds) with a two-sided 95 % Student-t interval.

    Args:
        a: values of the treatment, one per seed.
        b: values of the reference, same seeds in the same order.

    Returns:
        A :class:`PairedDiff` (with a single pair the interval is infinite).

    Example:
        >>> paired_diff([1.0, 2.0], [0.0, 0.0]).low < 1.5 < paired_diff([1.0, 2.0], [0.0, 0.0]).high
        True
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of values; got {len(a)} and {len(b)}.")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDiff(diffs, mean, -math.inf, math.inf)
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDiff(diffs, mean, mean - half, mean + half)
