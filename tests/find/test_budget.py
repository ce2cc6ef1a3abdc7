import pytest

from lightning_reg.find.budget import TrialCost, committed_runs, may_start_trial, spent_runs


def test_finished_trials_count_what_they_trained_running_and_waiting_ones_a_whole_run() -> None:
    trials = [
        TrialCost(0, "COMPLETE", 1.0),
        TrialCost(1, "PRUNED", 0.25),
        TrialCost(2, "FAIL", 0.5),  # a worker died half-way: what it trained is spent
        TrialCost(3, "RUNNING", 0.75),
        TrialCost(4, "WAITING"),
        TrialCost(5, "FAIL", 0.0, declined=True),
    ]
    assert committed_runs(trials) == 1.0 + 0.25 + 0.5 + 1.0 + 1.0
    assert spent_runs(trials) == 1.0 + 0.25 + 0.5 + 0.75
    assert committed_runs(trials, before=3) == 1.75


def test_the_trial_number_orders_a_race_for_the_last_slot() -> None:
    # two workers asked for trials 3 and 4 at once; the budget has room for one more full run
    trials = [TrialCost(0, "COMPLETE", 1.0), TrialCost(1, "COMPLETE", 1.0), TrialCost(2, "PRUNED", 0.5)]
    trials += [TrialCost(3, "RUNNING"), TrialCost(4, "RUNNING")]
    assert may_start_trial(trials, budget=3.5, number=3)
    assert not may_start_trial(trials, budget=3.5, number=4)  # declined: trial 3 may still need a full run
    assert not may_start_trial(trials, budget=3.5)  # and no worker asks for another one


def test_costs_are_validated() -> None:
    with pytest.raises(ValueError, match=r"`cost` must be a number in \[0, 1\]; got 1.5"):
        TrialCost(0, "COMPLETE", 1.5)
    with pytest.raises(ValueError, match=r"`state` must be one of 'COMPLETE', 'PRUNED', 'FAIL', 'RUNNING'"):
        TrialCost(0, "DONE")
