"""Pure overfitting criteria against numbers worked out by hand (binary-exact values, so no rounding)."""

import math

import numpy as np
import pytest

from lightning_reg.overfitting.criteria import (
    OverfittingCriteria,
    generalization_loss,
    overfitting_gap,
    progress_quotient,
    relative_gap,
    training_progress,
    trend_statistic,
)


def run(criteria, pairs, seq, **kw):
    """Feed ``seq`` = list of {pair: (train, val)}; return the list of reports per check."""
    crit = OverfittingCriteria(pairs, criteria, **kw)
    return [crit.update(v) for v in seq]


def fired_at(reports, pair, criterion):
    return [i for i, r in enumerate(reports) if criterion in r[pair].fired]


def test_gap_and_relative_gap_are_mode_aware():
    assert overfitting_gap(0.25, 0.75, "min") == 0.5  # val loss above train loss
    assert overfitting_gap(0.75, 0.25, "min") == -0.5  # underfitting / train measured with dropout
    assert overfitting_gap(1.0, 0.75, "max") == 0.25  # train accuracy above val accuracy
    assert relative_gap(0.25, 0.75, "min") == 2.0  # 0.5 / 0.25
    assert relative_gap(1.0, 0.75, "max") == 0.25
    assert relative_gap(0.0, 0.5, "min") == 0.5 / 1e-12
    with pytest.raises(ValueError, match="'mean'"):
        overfitting_gap(0.0, 1.0, "mean")


def test_generalization_loss_prechelt_formula():
    # Prechelt: GL(t) = 100 * (E_va(t) / E_opt(t) - 1)
    assert generalization_loss(0.5625, 0.5) == 100 * (0.5625 / 0.5 - 1) == 12.5
    assert generalization_loss(0.5, 0.5) == 0.0
    # max mode: how far below the best accuracy, in percent of it
    assert generalization_loss(0.4375, 0.5, "max") == 12.5
    assert generalization_loss(0.5, 0.4375, "max") == 0.0  # better than "best" cannot be a loss
    assert generalization_loss(0.1, 0.0) == math.inf
    assert generalization_loss(0.0, 0.0) == 0.0


def test_training_progress_prechelt_formula():
    strip = [1.0, 0.5, 0.25]
    k = len(strip)
    prechelt = 1000 * (sum(strip) / (k * min(strip)) - 1)  # 1000 * (1.75 / 0.75 - 1) = 1333.33...
    assert training_progress(strip) == pytest.approx(prechelt, rel=1e-12)
    assert training_progress(strip) == pytest.approx(4000 / 3, rel=1e-12)
    assert training_progress([0.25, 0.25, 0.25]) == 0.0
    # max mode: 1000 * (max - mean) / max for accuracies [0.5, 0.75, 1.0] -> 1000 * 0.25 = 250
    assert training_progress([0.5, 0.75, 1.0], "max") == 250.0
    assert training_progress([0.0, 0.5]) == math.inf
    with pytest.raises(ValueError, match="at least one"):
        training_progress([])


def test_progress_quotient_edges():
    assert progress_quotient(12.5, 250.0) == 0.05
    assert progress_quotient(0.0, 0.0) == 0.0
    assert progress_quotient(1.0, 0.0) == math.inf


def test_gl_fires_first_check_above_alpha_not_at_equality():
    vals = [1.0, 0.5, 0.53125, 0.5625, 0.5]  # GL: 0, 0, 6.25, 12.5, 0
    reports = run({"gl": 6.25}, {"loss": "min"}, [{"loss": (0.1, v)} for v in vals])
    assert [r["loss"].gl for r in reports] == [0.0, 0.0, 6.25, 12.5, 0.0]
    assert [r["loss"].best_val for r in reports] == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert fired_at(reports, "loss", "gl") == [3]  # 6.25 is not above 6.25


def test_gl_max_mode():
    accs = [0.25, 0.5, 0.46875, 0.4375]  # best 0.5 from check 1; GL = 6.25, 12.5
    reports = run({"gl": 10.0}, {"acc": "max"}, [{"acc": (1.0, a)} for a in accs])
    assert [r["acc"].gl for r in reports] == [0.0, 0.0, 6.25, 12.5]
    assert fired_at(reports, "acc", "gl") == [3]


def test_pq_uses_last_k_train_values():
    train = [1.0, 0.5, 0.25, 0.25, 0.25]
    val = [1.0, 0.5, 0.53125, 0.5625, 0.5625]
    reports = run({"pq": 0.01}, {"loss": "min"}, [{"loss": tv} for tv in zip(train, val)], strip_length=3)
    # check 0, 1: fewer than k=3 train values -> undefined, cannot fire
    assert reports[0]["loss"].pq is None and reports[1]["loss"].pq is None
    # check 2: GL 6.25, P_3 over [1, .5, .25] = 1000 * (1.75 / .75 - 1) = 4000/3 -> PQ = 6.25 * 3 / 4000
    assert reports[2]["loss"].pq == pytest.approx(6.25 * 3 / 4000)
    # check 3: GL 12.5, P_3 over [.5, .25, .25] = 1000 * (1 / .75 - 1) = 1000/3 -> PQ = 0.0375
    assert reports[3]["loss"].pq == pytest.approx(0.0375)
    # check 4: train flat -> P_3 = 0 -> PQ infinite while GL > 0
    assert reports[4]["loss"].pq == math.inf
    assert fired_at(reports, "loss", "pq") == [3, 4]


def test_up_needs_val_worse_and_train_better_s_times_in_a_row():
    train = [1.0, 0.875, 0.75, 0.625, 0.8125, 0.5]
    val = [1.0, 0.875, 0.9375, 1.0, 1.0625, 1.125]
    # check1: val better -> 0; c2: val worse, train better -> 1; c3: -> 2 (fires, s=2);
    # c4: val worse but train worse -> 0; c5: val worse, train better -> 1
    reports = run({"up": 2}, {"loss": "min"}, [{"loss": tv} for tv in zip(train, val)])
    assert [r["loss"].up_count for r in reports] == [0, 0, 1, 2, 0, 1]
    assert fired_at(reports, "loss", "up") == [3]


def test_gap_patience_counts_consecutive_checks():
    train = [0.5, 0.25, 0.25, 0.25, 0.25]
    val = [0.5, 0.625, 0.5, 0.625, 0.625]  # gaps 0, .375, .25, .375, .375
    reports = run({"gap": 0.25}, {"loss": "min"}, [{"loss": tv} for tv in zip(train, val)], patience=2)
    assert [r["loss"].gap for r in reports] == [0.0, 0.375, 0.25, 0.375, 0.375]
    assert fired_at(reports, "loss", "gap") == [4]  # .25 is not above .25 and resets the count
    reports = run({"gap": 0.25}, {"loss": "min"}, [{"loss": tv} for tv in zip(train, val)], patience=1)
    assert fired_at(reports, "loss", "gap") == [1, 3, 4]


def test_per_pair_thresholds_and_rel_gap_max_mode():
    seq = [
        {"loss": (0.5, 0.5), "acc": (0.5, 0.5)},
        {"loss": (0.25, 1.0), "acc": (0.75, 0.5)},  # acc rel gap 0.25/0.75 = 1/3
        {"loss": (0.25, 1.0), "acc": (1.0, 0.25)},  # acc rel gap 0.75
    ]
    reports = run({"rel_gap": {"acc": 0.5}}, {"loss": "min", "acc": "max"}, seq)
    assert reports[1]["acc"].rel_gap == pytest.approx(1 / 3)
    assert fired_at(reports, "acc", "rel_gap") == [2]
    assert fired_at(reports, "loss", "rel_gap") == []  # criterion not given for "loss" (its rel gap is 3)


def test_state_dict_round_trip_continues_identically():
    train = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]
    val = [1.0, 0.75, 0.8125, 0.875, 0.9375, 1.0, 1.0625]
    seq = [{"loss": tv} for tv in zip(train, val)]
    criteria = {"gl": 20.0, "up": 3, "pq": 0.05, "gap": 0.5}
    full = run(criteria, {"loss": "min"}, seq, strip_length=3, patience=2)
    first = OverfittingCriteria({"loss": "min"}, criteria, strip_length=3, patience=2)
    head = [first.update(v) for v in seq[:4]]
    second = OverfittingCriteria({"loss": "min"}, criteria, strip_length=3, patience=2)
    second.load_state_dict(first.state_dict())
    tail = [second.update(v) for v in seq[4:]]
    assert [r["loss"].as_dict() for r in head + tail] == [r["loss"].as_dict() for r in full]
    assert any(r["loss"].fired for r in tail)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"criteria": {"gapp": 0.1}}, r"Unknown criterion 'gapp'.*'trend', 'gl', 'pq', 'up', 'gap'"),
        ({"criteria": {"gl": 0.05}}, r"'gl'.*in percent.*0.05 %.*Write 5 for 5 %"),
        ({"criteria": {"gl": 1.0}, "window": 2}, r"`window` must be an int >= 3; got 2"),
        ({"criteria": {"gl": 1.0}, "trend_t": 0.0}, r"`trend_t` must be a finite number > 0; got 0.0"),
        ({"criteria": {"gap": -0.1}}, r"'gap'.*> 0.*-0.1"),
        ({"criteria": {"gl": 0.0}}, r"'gl'.*> 0.*got 0.0"),
        ({"criteria": {"pq": math.inf}}, r"finite"),
        ({"criteria": {"up": 0}}, r"'up'.*>= 1.*got 0"),
        ({"criteria": {"up": 2.5}}, r"'up'.*integer"),
        ({"criteria": {"gl": {"accuracy": 1.0}}}, r"unknown pair 'accuracy'.*\['loss'\]"),
        ({"criteria": {}}, r"non-empty"),
        ({"criteria": {"gl": 1.0}, "patience": 0}, r"patience.*got 0"),
        ({"criteria": {"gl": 1.0}, "strip_length": 1}, r"strip_length.*got 1"),
        ({"criteria": {"gl": 1.0}, "pairs": {"loss": "lower"}}, r"pair 'loss'.*'min', 'max'; got 'lower'"),
    ],
)
def test_bad_input(kwargs, match):
    kwargs = {"pairs": {"loss": "min"}, **kwargs}
    with pytest.raises(ValueError, match=match):
        OverfittingCriteria(**kwargs)


def test_missing_pair_values():
    crit = OverfittingCriteria({"loss": "min", "acc": "max"}, {"gl": 1.0})
    with pytest.raises(KeyError, match="acc"):
        crit.update({"loss": (0.1, 0.2)})


def _numpy_t(values):
    """Reference: ordinary least squares with numpy, t = slope / its standard error."""
    y = np.asarray(values, dtype=float)
    x = np.arange(len(y), dtype=float)
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    sigma2 = float(rss[0]) / (len(y) - 2)
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return coef[1] / math.sqrt(cov[1, 1])


def test_trend_statistic_is_the_ols_t_of_the_slope():
    # by hand: slope 0.09, residual sum of squares 0.002, se = sqrt(0.002 / 3 / 10) -> t = 11.02
    assert trend_statistic([1.0, 1.1, 1.15, 1.3, 1.35]) == pytest.approx(0.09 / math.sqrt(0.002 / 30))
    rng = np.random.default_rng(0)
    for n in (3, 5, 8, 13):
        for _ in range(20):
            y = rng.normal(size=n).cumsum()
            assert trend_statistic(y) == pytest.approx(_numpy_t(y), rel=1e-9)
            assert trend_statistic(y, "max") == pytest.approx(-_numpy_t(y), rel=1e-9)  # worse = lower
    assert trend_statistic([0.5, 0.5, 0.5]) == 0.0
    assert trend_statistic([0.5, 0.6, 0.7]) == math.inf  # exactly on a rising line
    with pytest.raises(ValueError, match="at least 3"):
        trend_statistic([1.0, 2.0])


def test_trend_ignores_a_single_bump_but_fires_on_a_sustained_rise():
    train = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15]
    val = [1.0, 0.8, 0.6, 0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 0.55, 0.6, 0.65, 0.7]
    seq = [{"loss": tv} for tv in zip(train, val)]
    trend = run({"trend": 5.0}, {"loss": "min"}, seq, window=4)
    gl = run({"gl": 5.0}, {"loss": "min"}, seq, window=4)
    # the bump at check 6: window [.5, .5, .5, 1] has t = 0.15 / sqrt(0.075 / 2 / 5) = 1.73 < 2.5
    assert trend[6]["loss"].trend == pytest.approx(0.15 / math.sqrt(0.0075))
    assert fired_at(gl, "loss", "gl")[0] == 6  # Prechelt's GL fires on the bump (100 % worse)
    # the rise .5 -> .7: windows from check 10 lie on a line (t = inf) and are > 5 % worse than 0.5
    assert fired_at(trend, "loss", "trend") == [10, 11, 12]
    assert [r["loss"].alert for r in trend] == [False] * 10 + [True] * 3


def test_alerts_need_training_to_improve_and_a_positive_gap():
    val = [1.0, 0.5, 0.6, 0.7]  # GL 20 % at check 2, 40 % at check 3
    pairs = {"loss": "min"}
    # training improving, validation worse than training: alerts
    reports = run({"gl": 5.0}, pairs, [{"loss": tv} for tv in zip([0.9, 0.4, 0.3, 0.2], val)], window=3)
    assert [r["loss"].alert for r in reports] == [False, False, True, True]
    # training flat over the window: the run is stuck, not overfitting
    reports = run({"gl": 5.0}, pairs, [{"loss": tv} for tv in zip([0.4] * 4, val)], window=3)
    assert fired_at(reports, "loss", "gl") == [2, 3]
    assert [r["loss"].alert for r in reports] == [False] * 4
    assert [r["loss"].held_back for r in reports][2:] == ["training not improving"] * 2
    # train worse than validation (e.g. measured with dropout or mixup): a negative gap is not overfitting
    reports = run({"gl": 5.0}, pairs, [{"loss": tv} for tv in zip([2.0, 1.5, 1.2, 1.0], val)], window=3)
    assert [r["loss"].alert for r in reports] == [False] * 4
    assert [r["loss"].held_back for r in reports][2:] == ["negative gap"] * 2
    # a gap criterion is about the gap itself: not held back by the training trend
    gaps = [{"loss": tv} for tv in zip([0.4] * 4, [0.45, 0.5, 0.6, 0.7])]  # gaps .05, .1, .2, .3
    reports = run({"gap": 0.1}, pairs, gaps, window=3)
    assert [r["loss"].alert for r in reports] == [False, False, True, True]


def test_warmup_holds_alerts_back():
    val = [1.0, 0.5, 0.6, 0.7]
    seq = [{"loss": tv} for tv in zip([0.9, 0.4, 0.3, 0.2], val)]
    reports = run({"gl": 5.0}, {"loss": "min"}, seq, window=3, warmup=3)
    assert [r["loss"].alert for r in reports] == [False, False, False, True]
    assert reports[2]["loss"].held_back == "warmup"


def test_nan_values_never_become_the_best():
    seq = [{"loss": (1.0, math.nan)}, {"loss": (0.9, 0.5)}, {"loss": (0.8, math.nan)}, {"loss": (0.7, 0.6)}]
    reports = run({"gl": 5.0}, {"loss": "min"}, seq)
    assert math.isnan(reports[0]["loss"].best_val)
    assert [r["loss"].best_val for r in reports[1:]] == [0.5, 0.5, 0.5]
    assert reports[3]["loss"].gl == pytest.approx(20.0) and reports[3]["loss"].best_check == 1
