"""Paired comparisons over seeds: the mean difference with its two-sided Student-t confidence interval.

The finder re-runs its choice, the best preset and no regularization on the same seeds; each seed gives
one pair of validation values, and the interval says how sure the difference is. The t quantile is
computed here (the regularized incomplete beta function by its continued fraction), so the finder needs
no SciPy.

Example:
    >>> d = paired_difference([0.91, 0.93, 0.92], [0.88, 0.90, 0.90])
    >>> round(d.mean, 4), d.low > 0
    (0.0267, True)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_reg._shared.validation import check_int, check_number

__all__ = ["PairedDifference", "paired_difference", "t_quantile"]


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the continued fraction of the incomplete beta function."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Return the regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` degrees of freedom and ``t >= 0``."""
    return 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: int) -> float:
    """Return the ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Args:
        p: probability in ``(0, 1)``, e.g. ``0.975`` for a two-sided 95 % interval.
        df: degrees of freedom, ``>= 1``.

    Returns:
        ``t`` with ``P(T <= t) = p``.

    Example:
        >>> round(t_quantile(0.975, 4), 4), round(t_quantile(0.975, 1), 3), t_quantile(0.5, 3)
        (2.7764, 12.706, 0.0)
    """
    p = check_number("p", p, low=0.0, high=1.0, low_open=True, high_open=True)
    df = check_int("df", df, low=1)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail = 1.0 - p
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):  # bisection: the tail is monotone in t
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of paired differences ``a_i - b_i`` with its two-sided confidence interval.

    Args:
        diffs: the differences, one per pair (seed).
        mean: their mean.
        low: lower end of the interval (``-inf`` with a single pair).
        high: upper end of the interval (``inf`` with a single pair).
        level: confidence level of the interval.

    Example:
        >>> d = PairedDifference((0.1, 0.3), 0.2, -1.07, 1.47)
        >>> d.excludes_zero, d.format()
        (False, '+0.2 [-1.07, +1.47]')
    """

    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the whole interval lies above or below zero.

        Example:
            >>> paired_difference([2.0, 3.0, 4.0], [0.0, 0.0, 0.0]).excludes_zero
            True
        """
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3) -> str:
        """``+0.012 [+0.004, +0.020]``: the mean and the interval with ``digits`` significant digits.

        Example:
            >>> paired_difference([0.02, 0.01, 0.03], [0.0, 0.0, 0.0]).format()
            '+0.02 [-0.00484, +0.0448]'
        """

        def f(x: float) -> str:
            return f"{x:+.{digits}g}" if math.isfinite(x) else ("-inf" if x < 0 else "+inf")

        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Mean of ``a_i - b_i`` over pairs with a two-sided Student-t interval at ``level``.

    Args:
        a: values of one configuration, one per seed.
        b: values of the other, same seeds in the same order.
        level: confidence level in ``(0, 1)``.

    Returns:
        The ``PairedDifference`` (with a single pair the interval is infinite).

    Raises:
        ValueError: no pairs, or ``a`` and ``b`` of different lengths.

    Example:
        >>> d = paired_difference([1.0, 2.0], [0.0, 0.0])
        >>> d.low < 1.5 < d.high
        True
    """
    level = check_number("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    if len(a) != len(b) or not a:
        raise ValueError(
            f"`a` and `b` must hold the same number (>= 1) of paired values; got {len(a)} and {len(b)}."
        )
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    mean = statistics.fmean(diffs)
    if len(diffs) == 1:
        return PairedDifference(diffs, mean, -math.inf, math.inf, level)
    half = t_quantile(0.5 + level / 2.0, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(diffs, mean, mean - half, mean + half, level)
