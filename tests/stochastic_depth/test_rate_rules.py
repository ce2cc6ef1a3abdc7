"""Depth rules and time schedules against formulas worked by hand (and timm's own rule)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest

from lightning_reg.stochastic_depth.rate_rules import (
    DepthRuleSpec,
    TimeScheduleSpec,
    constant_schedule,
    depth_rates,
    early_schedule,
    huang_depth_rates,
    late_schedule,
    linear_depth_rates,
    make_time_schedule,
    uniform_depth_rates,
    warmup_schedule,
)


def test_linear_rule_is_evenly_spaced_and_bit_identical_to_timm() -> None:
    timm_drop = pytest.importorskip("timm.layers.drop")
    # Worked by hand: 5 blocks from 0 to 0.2 -> steps of 0.05.
    assert linear_depth_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2], abs=1e-7)
    for n, rate in [(1, 0.1), (4, 0.3), (12, 0.1), (24, 0.5)]:
        assert linear_depth_rates(n, rate) == timm_drop.calculate_drop_path_rates(rate, n)
    assert linear_depth_rates(0, 0.1) == []


def test_huang_rule_is_l_over_L_times_max() -> None:
    # Huang et al. 2016: p_l = l / L * p_L, l = 1..L; 4 blocks, p_L = 0.2.
    assert huang_depth_rates(4, 0.2) == pytest.approx([0.05, 0.1, 0.15, 0.2], abs=1e-12)
    assert huang_depth_rates(1, 0.3) == pytest.approx([0.3])


def test_uniform_rule_and_dispatch() -> None:
    assert uniform_depth_rates(3, 0.25) == [0.25, 0.25, 0.25]
    assert depth_rates(3, 0.25, "uniform") == [0.25, 0.25, 0.25]
    assert depth_rates(4, 0.2, "huang") == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert depth_rates(3, 0.4, lambda n, p: [p * (i % 2) for i in range(n)]) == pytest.approx([0.0, 0.4, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "cosine"}, "`rule` must be one of 'linear', 'huang', 'uniform' or a callable; got 'cos"),
        ({"rule": lambda n, p: [p] * (n + 1)}, "returned 4 rates for 3 blocks"),
        ({"rule": lambda n, p: [1.0] * n}, r"`rate of block 0 from depth rule '<lambda>'` must be"),
        ({"max_rate": 1.0}, r"`max_rate` must be a number in \[0, 1\); got 1.0"),
        ({"max_rate": -0.1}, r"`max_rate` must be a number in \[0, 1\); got -0.1"),
        ({"max_rate": math.nan}, r"`max_rate` must be a number in \[0, 1\); got nan"),
    ],
)
def test_depth_rates_bad_input(kwargs: dict, match: str) -> None:
    args = {"num_blocks": 3, "max_rate": 0.1, "rule": "linear", **kwargs}
    with pytest.raises(ValueError, match=match):
        depth_rates(**args)


def test_rates_and_counts_reject_wrong_types() -> None:
    with pytest.raises(TypeError, match="`max_rate` must be a number in .*; got '0.1' of type str"):
        depth_rates(3, "0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`max_rate`"):
        linear_depth_rates(3, True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`num_blocks` must be an int >= 0; got 2.0 of type float"):
        huang_depth_rates(2.0, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_blocks` must be an int >= 0; got -1"):
        uniform_depth_rates(-1, 0.1)
    with pytest.raises(TypeError, match="`rule` must be one of .* or a callable; got 3"):
        depth_rates(3, 0.1, 3)  # type: ignore[arg-type]
    assert depth_rates(2, 0) == [0.0, 0.0]


def test_time_schedules_match_hand_worked_values() -> None:
    assert [constant_schedule(s, 10) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    # warm-up over 10 steps: t / 10, then 1.
    assert [warmup_schedule(s, 10) for s in (0, 3, 5, 10, 20)] == pytest.approx([0.0, 0.3, 0.5, 1.0, 1.0])
    assert warmup_schedule(0, 0) == 1.0
    # early, linear, cutoff 8: 1 - t / 8 before 8, then 0.
    assert [early_schedule(s, 8) for s in (0, 2, 6, 8, 100)] == pytest.approx([1.0, 0.75, 0.25, 0.0, 0.0])
    assert [early_schedule(s, 8, mode="constant") for s in (0, 7, 8)] == [1.0, 1.0, 0.0]
    # late, cutoff 5: 0 before 5, then 1.
    assert [late_schedule(s, 5) for s in (0, 4, 5, 9)] == [0.0, 0.0, 1.0, 1.0]


def test_make_time_schedule_binds_cutoff_and_is_picklable() -> None:
    f = make_time_schedule("early", cutoff=4, mode="linear")
    assert [f(s, 100) for s in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    g = pickle.loads(pickle.dumps(make_time_schedule("late", cutoff=2)))
    assert [g(s, 10) for s in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert make_time_schedule("constant")(3, 7) == 1.0

    def custom(step: int, total: int) -> float:
        return step / total

    assert make_time_schedule(custom) is custom


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("cosine", 3), ValueError, "`schedule` must be one of 'constant', 'warmup', 'early', 'late' or a"),
        (("warmup", None), TypeError, "`cutoff` must be an int >= 0 .* for schedule 'warmup'; got None"),
        (("late", -1), ValueError, "`cutoff` must be an int >= 0; got -1"),
        (("late", 2.0), TypeError, "`cutoff` must be an int >= 0; got 2.0 of type float"),
        (("early", 0), ValueError, "`cutoff` must be an int >= 1 for schedule 'early'"),
    ],
)
def test_make_time_schedule_bad_input(args: tuple, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_time_schedule(*args)
    with pytest.raises(ValueError, match="`early_mode` must be one of 'linear', 'constant'; got 'cosine'"):
        make_time_schedule("early", 3, mode="cosine")  # type: ignore[arg-type]


def test_depth_rule_spec_gives_targets_three_ways_and_validates_itself() -> None:
    own, levels = [0.0, 0.05, 0.1], [0, 1, 2]
    assert DepthRuleSpec().targets(own, levels) == own  # no max_rate: the model's own rates
    assert DepthRuleSpec(0.2, "huang").targets(own, levels) == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    assert DepthRuleSpec(0.2, scale_model_rates=True).targets(own, levels) == pytest.approx([0.0, 0.1, 0.2])
    # modules sharing a parent share a level, and so a rate
    assert DepthRuleSpec(0.2, "linear").targets([0.0] * 3, [0, 1, 1]) == pytest.approx([0.0, 0.2, 0.2])
    spec = DepthRuleSpec(0.1, "lightning_reg.stochastic_depth.rate_rules.huang_depth_rates")
    assert spec.rule is huang_depth_rates and spec.rule_name == "huang_depth_rates"
    with pytest.raises(ValueError, match=r"`rule` must be one of 'linear', 'huang', 'uniform' or a callable"):
        DepthRuleSpec(0.1, "cosine")
    with pytest.raises(TypeError, match="`scale_model_rates` must be a bool"):
        DepthRuleSpec(0.1, scale_model_rates=1)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.max_rate = 0.3  # type: ignore[misc]


def test_time_schedule_spec_resolves_its_cutoff_in_steps() -> None:
    assert TimeScheduleSpec("warmup", cutoff=3).cutoff_steps(None, -1) == 3
    assert TimeScheduleSpec("late", cutoff=2, cutoff_unit="epoch").cutoff_steps(4, 100) == 8
    assert TimeScheduleSpec("early", cutoff=0.25, cutoff_unit="fraction").cutoff_steps(None, 10) == 2
    with pytest.raises(ValueError, match="cutoff_unit='epoch' needs a dataloader with a known length"):
        TimeScheduleSpec("late", cutoff=2, cutoff_unit="epoch").cutoff_steps(None, 100)
    with pytest.raises(ValueError, match="cutoff_unit='fraction' needs a finite training length"):
        TimeScheduleSpec("warmup", cutoff=0.5, cutoff_unit="fraction").cutoff_steps(10, -1)
    # "early" keeps the rates on for step 0 however small the cutoff in steps
    assert TimeScheduleSpec("early", cutoff=0.01, cutoff_unit="fraction").function(0)(0, 10) == 1.0
    assert TimeScheduleSpec().function()(5, 10) == 1.0
    with pytest.raises(ValueError, match="`early_mode` is used only by the 'early' schedule"):
        TimeScheduleSpec("warmup", cutoff=3, early_mode="constant")
    with pytest.raises(ValueError, match="`cutoff` in steps must be a whole number >= 0; got 2.5"):
        TimeScheduleSpec("late", cutoff=2.5)
