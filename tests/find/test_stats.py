import math

import pytest
from scipy import stats as scipy_stats

from lightning_reg.find.stats import paired_difference, t_quantile


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30, 200])
@pytest.mark.parametrize("p", [0.025, 0.5, 0.9, 0.975, 0.999])
def test_t_quantile_matches_scipy(df: int, p: float) -> None:
    # scipy < 1.11 computes t.ppf with another algorithm than later releases: they differ by ~2e-9 relative
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-7, abs=1e-12)


def test_paired_difference_is_the_paired_t_interval() -> None:
    a, b = [0.91, 0.93, 0.90, 0.95], [0.88, 0.92, 0.90, 0.91]
    d = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    low, high = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / 4, scale=scipy_stats.sem(diffs))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert d.mean == pytest.approx(0.02) and not d.excludes_zero


def test_one_pair_has_an_infinite_interval_and_mismatched_pairs_are_refused() -> None:
    d = paired_difference([1.0], [0.5])
    assert d.mean == 0.5 and math.isinf(d.low) and math.isinf(d.high)
    assert d.format() == "+0.5 [-inf, +inf]"
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of paired values; got 2 and 1"):
        paired_difference([1.0, 2.0], [1.0])
