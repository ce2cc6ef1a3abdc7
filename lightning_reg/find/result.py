"""What the finder returns: the choice, every trial, the seed-paired comparison and the cost.

Plain data: ``lightning_reg.find.search.find_regularization`` fills it from the Optuna study, and the
writers of ``lightning_reg.find.output`` turn it into a config fragment, Python arguments, a table and
a plot.

Example:
    >>> from lightning_reg import get_preset
    >>> from lightning_reg.find.space import Candidate, no_regularization, SearchSpace
    >>> choice = Candidate(get_preset("medium", weight_decay=0.02))
    >>> r = FinderResult(
    ...     metric="val_acc", mode="max", choice=choice, choice_trial=4, choice_value=0.93,
    ...     arms=(ArmResult("choice", choice, (0.93, 0.92, 0.94), 2.4),
    ...           ArmResult("none", no_regularization(SearchSpace()), (0.90, 0.90, 0.91), 3.0)),
    ...     seeds=(1, 2, 3), trials=(), budget=10.0, search_cost=9.1, compare_cost=5.4)
    >>> r.differences()["none"].format(), r.model_kwargs()["weight_decay"]
    ('+0.0267 [+0.0123, +0.041]', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_reg.find.space import Candidate
from lightning_reg.find.stats import PairedDifference, paired_difference

__all__ = ["ArmResult", "FinderResult", "TrialSummary"]


@dataclass(frozen=True)
class TrialSummary:
    """One trial of the search, as the table and the plot show it.

    Args:
        number: Optuna's trial number.
        state: ``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"``.
        value: the objective (for a pruned trial: its last reported value), or ``None``.
        cost: full-run equivalents it trained.
        description: the candidate in one line (``Candidate.describe``).
        ladder: the preset's name for a ladder trial (a named preset as it is), else ``None``.
        curve: ``(epoch, metric)`` pairs reported to the pruner.

    Example:
        >>> TrialSummary(0, "COMPLETE", 0.9, 1.0, "mild", "mild").ladder
        'mild'
    """

    number: int
    state: str
    value: float | None
    cost: float
    description: str
    ladder: str | None = None
    curve: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ArmResult:
    """One configuration of the final comparison, re-run on every comparison seed.

    Args:
        label: ``"choice"``, ``"none"`` (no regularization) or ``"preset <name>"`` (the best preset).
        candidate: its configuration.
        values: the metric of the returned weights, one per seed (in the order of ``FinderResult.seeds``).
        cost: full-run equivalents its runs trained.

    Example:
        >>> from lightning_reg import get_preset
        >>> ArmResult("preset mild", Candidate(get_preset("mild")), (0.9, 0.91), 1.6).mean
        0.905
    """

    label: str
    candidate: Candidate
    values: tuple[float, ...]
    cost: float

    @property
    def mean(self) -> float:
        """Mean of ``values`` over the seeds."""
        return sum(self.values) / len(self.values) if self.values else float("nan")


@dataclass(frozen=True)
class FinderResult:
    """The regularization the finder chose, the evidence for it and what it cost.

    Args:
        metric: the validation metric of the objective.
        mode: ``"min"`` or ``"max"``.
        choice: the chosen configuration (the best trial of the search).
        choice_trial: its trial number.
        choice_value: its value in the search.
        arms: the comparison: the choice first, then no regularization and the best preset (when the
            choice is not a preset as it is).
        seeds: the comparison seeds (the search ran on another one).
        trials: every trial of the search that trained, by number.
        budget: the search budget in full-run equivalents.
        search_cost: full-run equivalents the search trained.
        compare_cost: full-run equivalents the comparison trained.

    Example:
        >>> from lightning_reg import get_preset
        >>> c = Candidate(get_preset("mild"))
        >>> FinderResult("val_loss", "min", c, 0, 0.3, (), (), (), 10.0, 2.5, 3.0).total_cost
        5.5
    """

    metric: str
    mode: str
    choice: Candidate
    choice_trial: int
    choice_value: float
    arms: tuple[ArmResult, ...]
    seeds: tuple[int, ...]
    trials: tuple[TrialSummary, ...]
    budget: float
    search_cost: float
    compare_cost: float

    @property
    def total_cost(self) -> float:
        """Full-run equivalents of the whole finder: the search and the comparison."""
        return self.search_cost + self.compare_cost

    def differences(self) -> dict[str, PairedDifference]:
        """Return the choice minus every other arm, paired by seed, with 95 % Student-t intervals.

        A positive difference means the choice's metric is higher (better for ``mode="max"``, worse for
        ``"min"``).

        Returns:
            ``{arm label: PairedDifference}`` for every arm but the choice.
        """
        if not self.arms:
            return {}
        choice = self.arms[0]
        return {a.label: paired_difference(choice.values, a.values) for a in self.arms[1:]}

    def model_kwargs(self) -> dict[str, Any]:
        """Return the model's arguments for the choice: ``preset``, ``weight_decay=None``, model args.

        Example:
            >>> from lightning_reg import get_preset
            >>> c = Candidate(get_preset("mild"), model_args={"dropout": 0.1})
            >>> FinderResult("val_loss", "min", c, 0, 0.3, (), (), (), 10.0, 1.0, 0.0).model_kwargs()
            {'preset': Preset(name='mild', ...), 'weight_decay': None, 'dropout': 0.1}
        """
        return {"preset": self.choice.preset, "weight_decay": None, **self.choice.model_args}

    def callback_kwargs(self) -> Mapping[str, Any]:
        """Return the arguments of ``preset_callbacks`` for the choice: its preset, monitor and mode.

        Example:
            >>> from lightning_reg import get_preset
            >>> c = Candidate(get_preset("mild"), monitor="val_acc", mode="max")
            >>> r = FinderResult("val_acc", "max", c, 0, 0.9, (), (), (), 10.0, 1.0, 0.0)
            >>> sorted(r.callback_kwargs())
            ['mode', 'monitor', 'preset']
        """
        return {"preset": self.choice.preset, "monitor": self.choice.monitor, "mode": self.choice.mode}
