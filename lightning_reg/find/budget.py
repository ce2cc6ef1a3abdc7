"""The finder's budget, counted in full-run equivalents, and the rule that keeps several workers inside it.

One full run is the training the user's Trainer settings ask for (``max_epochs`` or ``max_steps``); a
trial that trained a quarter of its optimizer steps before it was pruned or stopped early cost 0.25. A
trial may start only when the trials before it (by trial number) leave room for one more full run: a
finished trial counts what it trained, a running or waiting one counts a whole run (it may still need
it). Every worker applies the same rule to the same shared storage, so the trials that train never add
up to more than the budget, however many workers race for the last slot (the loser of a race is
declined before it trains).

Example:
    >>> trials = [TrialCost(0, "COMPLETE", 1.0), TrialCost(1, "PRUNED", 0.25), TrialCost(2, "RUNNING", 0.5)]
    >>> committed_runs(trials), may_start_trial(trials, budget=3.0), may_start_trial(trials, budget=3.25)
    (2.25, False, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lightning_reg._shared.validation import check_choice, check_int, check_number

__all__ = ["TrialCost", "committed_runs", "may_start_trial", "spent_runs"]

#: Trial states (Optuna's names) whose cost is final.
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
_STATES = (*FINISHED, "RUNNING", "WAITING")


@dataclass(frozen=True)
class TrialCost:
    """What the budget needs to know about one trial.

    Args:
        number: the trial's number in its study.
        state: Optuna's state name: ``"COMPLETE"``, ``"PRUNED"``, ``"FAIL"``, ``"RUNNING"`` or ``"WAITING"``.
        cost: full-run equivalents it trained so far, in ``[0, 1]``.
        declined: it was refused a slot before it trained (it costs nothing and reserves nothing).

    Example:
        >>> TrialCost(3, "PRUNED", 0.25).reserved
        0.25
    """

    number: int
    state: str
    cost: float = 0.0
    declined: bool = False

    def __post_init__(self) -> None:
        check_int("number", self.number, low=0)
        check_choice("state", self.state, _STATES)
        object.__setattr__(self, "cost", check_number("cost", self.cost, low=0.0, high=1.0))

    @property
    def reserved(self) -> float:
        """Its share of the budget: what it trained when finished, a whole run while it may still train.

        Example:
            >>> TrialCost(0, "RUNNING", 0.5).reserved, TrialCost(1, "FAIL", 0.0, declined=True).reserved
            (1.0, 0.0)
        """
        if self.declined:
            return 0.0
        return self.cost if self.state in FINISHED else 1.0


def committed_runs(trials: Iterable[TrialCost], before: int | None = None) -> float:
    """Full-run equivalents spent or reserved by ``trials`` (only those numbered below ``before``, if given).

    Example:
        >>> committed_runs([TrialCost(0, "COMPLETE", 0.5), TrialCost(1, "WAITING")], before=1)
        0.5
    """
    return sum(t.reserved for t in trials if before is None or t.number < before)


def spent_runs(trials: Iterable[TrialCost]) -> float:
    """Full-run equivalents actually trained by ``trials`` (running ones: so far).

    Example:
        >>> spent_runs([TrialCost(0, "COMPLETE", 0.5), TrialCost(1, "RUNNING", 0.25)])
        0.75
    """
    return sum(t.cost for t in trials if not t.declined)


def may_start_trial(trials: Iterable[TrialCost], budget: float, number: int | None = None) -> bool:
    """Whether one more full run fits in ``budget`` after ``trials`` (those numbered below ``number``).

    Without ``number``: whether a new trial may be asked for. With the number of a trial just asked for:
    whether that trial may train (the trials before it keep their reservations; later ones do not count).

    Args:
        trials: the study's trials.
        budget: the budget in full-run equivalents.
        number: the number of the trial that wants to start.

    Example:
        >>> ts = [TrialCost(0, "RUNNING"), TrialCost(1, "RUNNING")]
        >>> may_start_trial(ts, budget=2.0, number=1), may_start_trial(ts, budget=2.0)
        (True, False)
    """
    budget = check_number("budget", budget, low=0.0)
    return committed_runs(trials, before=number) + 1.0 <= budget + 1e-9
