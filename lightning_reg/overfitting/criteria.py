"""Overfitting criteria over a history of train/validation values (pure Python, no Lightning).

The quantities, for one pair of metrics (a train side and a validation side) with a ``mode``:

* **gap**: how much worse validation is than training, signed so that positive means overfitting:
  ``val - train`` for ``mode="min"`` (losses), ``train - val`` for ``mode="max"`` (accuracies).
* **relative gap**: ``gap / |train|``.
* **GL** (Prechelt 1998, "Early stopping - but when?"): generalization loss in percent,
  ``100 * (val / best_val - 1)``; written mode-aware as ``100 * (val - best) / |best|`` for ``"min"`` and
  ``100 * (best - val) / |best|`` for ``"max"``, where ``best`` is the best validation value so far
  (this check included), so ``GL >= 0``.
* **P_k**: training progress over the last ``k`` train values,
  ``1000 * (sum / (k * min) - 1)`` for ``"min"`` (written ``1000 * (mean - min) / |min|``) and
  ``1000 * (max - mean) / |max|`` for ``"max"``.
* **PQ**: progress quotient ``GL / P_k``.
* **UP_s**: validation worse than at the previous check while training is better, ``s`` checks in a row.

:class:`OverfittingCriteria` evaluates any combination of ``gap``, ``rel_gap``, ``gl``, ``pq`` and ``up``
over a sequence of checks, keeps its state as plain Python values (``state_dict`` / ``load_state_dict``)
and can be unit-tested without a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CRITERIA",
    "CheckReport",
    "OverfittingCriteria",
    "generalization_loss",
    "overfitting_gap",
    "progress_quotient",
    "relative_gap",
    "training_progress",
]

#: Names of the criteria :class:`OverfittingCriteria` understands.
CRITERIA: tuple[str, ...] = ("gap", "rel_gap", "gl", "pq", "up")
_MODES = ("min", "max")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {list(_MODES)}, got {mode!r}.")


def overfitting_gap(train: float, val: float, mode: str = "min") -> float:
    """Return the train/validation gap, positive when validation is worse than training.

    Args:
        train: train-side value.
        val: validation-side value.
        mode: ``"min"`` if lower is better (losses), ``"max"`` if higher is better (accuracies).

    Returns:
        ``val - train`` for ``"min"``, ``train - val`` for ``"max"``.

    Example:
        >>> overfitting_gap(0.25, 0.5, "min")
        0.25
        >>> overfitting_gap(1.0, 0.75, "max")
        0.25
    """
    _check_mode(mode)
    return val - train if mode == "min" else train - val


def relative_gap(train: float, val: float, mode: str = "min", eps: float = 1e-12) -> float:
    """Return the gap divided by the magnitude of the train value.

    Args:
        train: train-side value.
        val: validation-side value.
        mode: ``"min"`` or ``"max"``.
        eps: floor on ``|train|`` so that a train loss of exactly zero gives a large finite number.

    Returns:
        ``overfitting_gap(train, val, mode) / max(|train|, eps)``.

    Example:
        >>> relative_gap(0.25, 0.5, "min")
        1.0
    """
    return overfitting_gap(train, val, mode) / max(abs(train), eps)


def generalization_loss(val: float, best_val: float, mode: str = "min") -> float:
    """Prechelt's generalization loss GL in percent: how much worse ``val`` is than the best so far.

    Args:
        val: the current validation value.
        best_val: the best validation value so far (including ``val``).
        mode: ``"min"`` or ``"max"``.

    Returns:
        ``100 * (val - best) / |best|`` (``"min"``) or ``100 * (best - val) / |best|`` (``"max"``); ``0`` when
        ``val == best``, ``inf`` when ``best == 0`` and ``val`` is worse.

    Example:
        >>> generalization_loss(0.75, 0.5)
        50.0
    """
    _check_mode(mode)
    worse = val - best_val if mode == "min" else best_val - val
    if worse <= 0:
        return 0.0
    if best_val == 0:
        return math.inf
    return 100.0 * worse / abs(best_val)


def training_progress(strip: Sequence[float], mode: str = "min") -> float:
    """Prechelt's training progress P_k over a strip of ``k`` train values, in per mille.

    Args:
        strip: the last ``k`` train values (``k >= 1``).
        mode: ``"min"`` or ``"max"``.

    Returns:
        ``1000 * (mean - min) / |min|`` for ``"min"`` (equal to ``1000 * (sum / (k * min) - 1)`` for
        positive values), ``1000 * (max - mean) / |max|`` for ``"max"``; ``inf`` if the best value is 0 and
        the strip is not constant.

    Example:
        >>> round(training_progress([0.4, 0.3, 0.2]), 6)
        500.0
    """
    _check_mode(mode)
    if len(strip) == 0:
        raise ValueError("`strip` must hold at least one value.")
    mean = math.fsum(strip) / len(strip)
    best = min(strip) if mode == "min" else max(strip)
    diff = mean - best if mode == "min" else best - mean
    if diff <= 0:
        return 0.0
    if best == 0:
        return math.inf
    return 1000.0 * diff / abs(best)


def progress_quotient(gl: float, progress: float) -> float:
    """Prechelt's progress quotient ``PQ = GL / P_k``.

    Args:
        gl: generalization loss (percent), see :func:`generalization_loss`.
        progress: training progress (per mille), see :func:`training_progress`.

    Returns:
        ``gl / progress``; ``inf`` if training no longer progresses (``progress == 0``) while ``gl > 0``, and
        ``0`` if ``gl == 0``.

    Example:
        >>> progress_quotient(10.0, 20.0)
        0.5
    """
    if gl == 0:
        return 0.0
    if progress == 0:
        return math.inf
    return gl / progress


@dataclass
class CheckReport:
    """What one check found for one pair.

    Args:
        pair: name of the pair.
        check: index of the check (0-based, counted over the whole run).
        train: train-side value.
        val: validation-side value.
        gap: see :func:`overfitting_gap`.
        rel_gap: see :func:`relative_gap`.
        best_val: best validation value so far.
        gl: see :func:`generalization_loss`.
        progress: P_k, or ``None`` before ``k`` train values exist.
        pq: PQ, or ``None`` before ``k`` train values exist.
        up_count: number of checks in a row with validation worse and training better.
        fired: names of the criteria whose condition holds (including patience) at this check.

    Example:
        >>> CheckReport("loss", 0, 0.1, 0.3, 0.2, 2.0, 0.3, 0.0, None, None, 0, []).fired
        []
    """

    pair: str
    check: int
    train: float
    val: float
    gap: float
    rel_gap: float
    best_val: float
    gl: float
    progress: float | None
    pq: float | None
    up_count: int
    fired: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain dict (for checkpoints and loggers).

        Example:
            >>> CheckReport("loss", 0, 0.1, 0.3, 0.2, 2.0, 0.3, 0.0, None, None, 0, [])["pair"]
            'loss'
        """
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def _validate_criteria(
    criteria: Mapping[str, float | Mapping[str, float]], pairs: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Normalise ``criteria`` to ``{criterion: {pair: threshold}}`` and validate names and signs."""
    if not isinstance(criteria, Mapping) or not criteria:
        raise ValueError(
            f"`criteria` must be a non-empty mapping from a criterion in {list(CRITERIA)} to a threshold, "
            f"got {criteria!r}."
        )
    out: dict[str, dict[str, float]] = {}
    for name, spec in criteria.items():
        if name not in CRITERIA:
            raise ValueError(f"Unknown criterion {name!r}. Valid criteria: {list(CRITERIA)}.")
        per_pair = dict(spec) if isinstance(spec, Mapping) else {p: spec for p in pairs}
        for pair, threshold in per_pair.items():
            if pair not in pairs:
                raise ValueError(
                    f"Criterion {name!r} names unknown pair {pair!r}. Valid pairs: {sorted(pairs)}."
                )
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise TypeError(
                    f"Threshold of criterion {name!r} for pair {pair!r} must be a number, got {threshold!r}."
                )
            if name == "up":
                if int(threshold) != threshold or threshold < 1:
                    raise ValueError(
                        f"Criterion 'up' takes the number of successive checks s, an integer >= 1; got "
                        f"{threshold!r} for pair {pair!r}."
                    )
            elif not threshold > 0 or math.isinf(threshold):
                raise ValueError(
                    f"Threshold of criterion {name!r} for pair {pair!r} must be a finite number > 0 (a gap, "
                    f"GL or PQ above it signals overfitting), got {threshold!r}."
                )
        out[name] = {p: float(t) for p, t in per_pair.items()}
    return out


class OverfittingCriteria:
    """Evaluate overfitting criteria over successive checks of train/validation pairs.

    Criteria (thresholds must be ``> 0``; a criterion given as a number applies to every pair, given as a
    ``{pair: threshold}`` mapping it applies to the listed pairs only):

    * ``"gap"``: absolute gap above the threshold for ``patience`` checks in a row;
    * ``"rel_gap"``: relative gap above the threshold for ``patience`` checks in a row;
    * ``"gl"``: Prechelt's GL above ``alpha`` (first check where it holds);
    * ``"pq"``: Prechelt's PQ above ``alpha`` (needs ``strip`` train values; P_k is computed over the
      train values of the last ``strip`` checks, a sliding window);
    * ``"up"``: validation worse than at the previous check while training improves, ``s`` checks in a row
      (the threshold is ``s``).

    A pair fires when any of its criteria holds. Counters keep running during warm-up; only the callback
    decides what to do with a firing (see ``OverfittingMonitor``).

    Args:
        pairs: ``{pair_name: mode}`` with mode ``"min"`` or ``"max"``.
        criteria: ``{criterion: threshold or {pair: threshold}}``.
        patience: checks in a row the ``gap`` / ``rel_gap`` conditions must hold (``>= 1``).
        strip: ``k`` of P_k (``>= 2``).

    Example:
        >>> crit = OverfittingCriteria({"loss": "min"}, {"gap": 0.25}, patience=2)
        >>> [crit.update({"loss": (t, v)})["loss"].fired for t, v in [(0.5, 0.6), (0.3, 0.6), (0.2, 0.6)]]
        [[], [], ['gap']]
    """

    def __init__(
        self,
        pairs: Mapping[str, str],
        criteria: Mapping[str, float | Mapping[str, float]],
        patience: int = 1,
        strip: int = 5,
    ) -> None:
        if not pairs:
            raise ValueError("`pairs` must name at least one pair.")
        for name, mode in pairs.items():
            if mode not in _MODES:
                raise ValueError(f"Mode of pair {name!r} must be one of {list(_MODES)}, got {mode!r}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"`patience` must be an integer >= 1, got {patience!r}.")
        if isinstance(strip, bool) or not isinstance(strip, int) or strip < 2:
            raise ValueError(f"`strip` (k of P_k) must be an integer >= 2, got {strip!r}.")
        self.pairs = dict(pairs)
        self.criteria = _validate_criteria(criteria, self.pairs)
        self.patience = patience
        self.strip = strip
        self.num_checks = 0
        self._state: dict[str, dict[str, Any]] = {p: self._fresh_state() for p in self.pairs}

    @staticmethod
    def _fresh_state() -> dict[str, Any]:
        return {
            "best_val": None,
            "prev_train": None,
            "prev_val": None,
            "train_window": [],
            "gap_count": 0,
            "rel_gap_count": 0,
            "up_count": 0,
        }

    def _threshold(self, criterion: str, pair: str) -> float | None:
        return self.criteria.get(criterion, {}).get(pair)

    def update(self, values: Mapping[str, tuple[float, float]]) -> dict[str, CheckReport]:
        """Record one check and return a report per pair.

        Args:
            values: ``{pair: (train, val)}`` for every pair.

        Returns:
            ``{pair: CheckReport}``.

        Example:
            >>> crit = OverfittingCriteria({"loss": "min"}, {"gl": 5.0})
            >>> crit.update({"loss": (0.3, 0.50)})["loss"].fired
            []
            >>> crit.update({"loss": (0.2, 0.56)})["loss"].fired
            ['gl']
        """
        missing = set(self.pairs) - set(values)
        if missing:
            raise KeyError(f"Missing values for pairs {sorted(missing)}; expected {sorted(self.pairs)}.")
        reports = {}
        for pair, mode in self.pairs.items():
            train, val = (float(x) for x in values[pair])
            st = self._state[pair]
            better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)  # noqa: E731
            best = val if st["best_val"] is None or better(val, st["best_val"]) else st["best_val"]
            st["best_val"] = best
            gap = overfitting_gap(train, val, mode)
            rgap = relative_gap(train, val, mode)
            gl = generalization_loss(val, best, mode)
            window = (st["train_window"] + [train])[-self.strip :]
            st["train_window"] = window
            progress = training_progress(window, mode) if len(window) == self.strip else None
            pq = progress_quotient(gl, progress) if progress is not None else None
            if st["prev_val"] is not None and better(st["prev_val"], val) and better(train, st["prev_train"]):
                st["up_count"] += 1
            else:
                st["up_count"] = 0
            st["prev_train"], st["prev_val"] = train, val
            fired = []
            for crit, value, key in (("gap", gap, "gap_count"), ("rel_gap", rgap, "rel_gap_count")):
                thr = self._threshold(crit, pair)
                if thr is None:
                    continue
                st[key] = st[key] + 1 if value > thr else 0
                if st[key] >= self.patience:
                    fired.append(crit)
            thr = self._threshold("gl", pair)
            if thr is not None and gl > thr:
                fired.append("gl")
            thr = self._threshold("pq", pair)
            if thr is not None and pq is not None and pq > thr:
                fired.append("pq")
            thr = self._threshold("up", pair)
            if thr is not None and st["up_count"] >= thr:
                fired.append("up")
            reports[pair] = CheckReport(
                pair, self.num_checks, train, val, gap, rgap, best, gl, progress, pq, st["up_count"], fired
            )
        self.num_checks += 1
        return reports

    def state_dict(self) -> dict[str, Any]:
        """Return the state (plain Python values) for checkpoints.

        Example:
            >>> OverfittingCriteria({"loss": "min"}, {"gl": 5.0}).state_dict()["num_checks"]
            0
        """
        return {
            "num_checks": self.num_checks,
            "pairs": {
                p: {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
                for p, s in self._state.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        Args:
            state: a dict from :meth:`state_dict`.

        Example:
            >>> a = OverfittingCriteria({"loss": "min"}, {"gl": 5.0})
            >>> _ = a.update({"loss": (0.3, 0.5)})
            >>> b = OverfittingCriteria({"loss": "min"}, {"gl": 5.0})
            >>> b.load_state_dict(a.state_dict())
            >>> b.update({"loss": (0.2, 0.56)})["loss"].fired
            ['gl']
        """
        self.num_checks = int(state["num_checks"])
        for pair in self.pairs:
            if pair in state["pairs"]:
                restored = self._fresh_state()
                restored.update(state["pairs"][pair])
                restored["train_window"] = list(restored["train_window"])
                self._state[pair] = restored
