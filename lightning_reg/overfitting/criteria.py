"""Overfitting criteria over a history of train/validation values (pure Python, no Lightning).

The quantities, for one pair of metrics (a train side and a validation side) with a ``mode``:

* **gap**: how much worse validation is than training, signed so that positive means overfitting:
  ``val - train`` for ``mode="min"`` (losses), ``train - val`` for ``mode="max"`` (accuracies).
* **relative gap**: ``gap / |train|``.
* **GL** (Prechelt 1998, "Early stopping - but when?"): generalization loss in percent,
  ``100 * (val / best_val - 1)``; written mode-aware as ``100 * (val - best) / |best|`` for ``"min"`` and
  ``100 * (best - val) / |best|`` for ``"max"``, where ``best`` is the best validation value so far
  (this check included), so ``GL >= 0``.
* **trend**: the t-statistic of the least-squares slope of the last ``window`` validation values, signed
  so that positive means getting worse
  ([`trend_statistic`][lightning_reg.overfitting.criteria.trend_statistic]); ``t >= 2.5`` is a rise that the
  scatter
  of those values around the fitted line does not explain.
* **P_k**: training progress over the last ``k`` train values,
  ``1000 * (sum / (k * min) - 1)`` for ``"min"`` (written ``1000 * (mean - min) / |min|``) and
  ``1000 * (max - mean) / |max|`` for ``"max"``.
* **PQ**: progress quotient ``GL / P_k``.
* **UP_s**: validation worse than at the previous check while training is better, ``s`` checks in a row.

[`OverfittingCriteria`][lightning_reg.overfitting.criteria.OverfittingCriteria] evaluates any combination of
``trend``, ``gl``, ``pq``, ``up``, ``gap`` and
``rel_gap`` over a sequence of checks and decides, per pair, whether a check is an **alert**: the pair's
criteria fire, after the warm-up, and, for the criteria about validation getting worse (``trend``, ``gl``,
``pq``, ``up``), training still improves over the window and the gap is positive (validation worse than
training: a negative gap is never called overfitting). It keeps its state as plain Python values
(``state_dict`` / ``load_state_dict``), so a benchmark can replay recorded curves through exactly the
decisions the callback takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_reg._shared.validation import check_choice, check_int, check_number

__all__ = [
    "CRITERIA",
    "DEFAULT_TREND_FLOOR",
    "TREND_T",
    "CheckReport",
    "OverfittingCriteria",
    "default_criteria",
    "generalization_loss",
    "overfitting_gap",
    "progress_quotient",
    "relative_gap",
    "training_progress",
    "trend_statistic",
]

#: Names of the criteria ``OverfittingCriteria`` understands.
CRITERIA: tuple[str, ...] = ("trend", "gl", "pq", "up", "gap", "rel_gap")
#: Criteria about validation getting worse while training improves (gated, see ``OverfittingCriteria``).
DIVERGENCE_CRITERIA: tuple[str, ...] = ("trend", "gl", "pq", "up")
#: The default ``trend`` floor (GL in percent) by the mode of a pair, chosen with
#: ``benchmarks/overfitting_alerts.py``: validation more than 5 % (losses, ``"min"``) or 10 % (accuracies and
#: other scores, ``"max"``) worse than its best and rising as a trend (t >= TREND_T) over the last ``window``
#: (default 8) checks. A bounded score far from 100 % (an accuracy of 30 %) moves by more than 5 % of itself
#: on noise; 10 % kept every accuracy curve that improves to the end alert-free on the benchmark.
DEFAULT_TREND_FLOOR: dict[str, float] = {"min": 5.0, "max": 10.0}


def default_criteria(pairs: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Return the default criteria for ``{pair: mode}``: ``trend`` with ``DEFAULT_TREND_FLOOR`` per mode.

    Args:
        pairs: ``{pair_name: "min" or "max"}``.

    Returns:
        ``{"trend": {pair: floor}}``.

    Example:
        >>> default_criteria({"loss": "min", "acc": "max"})
        {'trend': {'loss': 5.0, 'acc': 10.0}}
    """
    return {"trend": {name: DEFAULT_TREND_FLOOR[mode] for name, mode in pairs.items()}}
#: Default t-statistic a validation trend must reach for the ``trend`` criterion.
TREND_T = 2.5
_MODES = ("min", "max")


def _check_mode(mode: str) -> None:
    check_choice("mode", mode, _MODES)


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


def training_progress(strip_values: Sequence[float], mode: str = "min") -> float:
    """Prechelt's training progress P_k over a strip of ``k`` train values, in per mille.

    Args:
        strip_values: the last ``k`` train values (``k >= 1``).
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
    if len(strip_values) == 0:
        raise ValueError("`strip_values` must hold at least one value.")
    mean = math.fsum(strip_values) / len(strip_values)
    best = min(strip_values) if mode == "min" else max(strip_values)
    diff = mean - best if mode == "min" else best - mean
    if diff <= 0:
        return 0.0
    if best == 0:
        return math.inf
    return 1000.0 * diff / abs(best)


def progress_quotient(gl: float, progress: float) -> float:
    """Prechelt's progress quotient ``PQ = GL / P_k``.

    Args:
        gl: generalization loss (percent), see
            [`generalization_loss`][lightning_reg.overfitting.criteria.generalization_loss].
        progress: training progress (per mille), see
            [`training_progress`][lightning_reg.overfitting.criteria.training_progress].

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


def trend_statistic(values: Sequence[float], mode: str = "min") -> float:
    """t-statistic of the least-squares slope of ``values`` over their index, positive when getting worse.

    ``slope / standard_error(slope)`` with the slope fitted to ``(0, v_0), (1, v_1), ...``; for ``"max"``
    the sign is flipped, so a positive value always means the metric is getting worse. With ``n`` values
    the statistic has ``n - 2`` degrees of freedom; values exactly on a line give ``+-inf`` (or 0 if flat).

    Args:
        values: at least 3 consecutive values of a metric.
        mode: ``"min"`` or ``"max"``.

    Returns:
        The signed t-statistic.

    Example:
        >>> round(trend_statistic([1.0, 1.1, 1.15, 1.3, 1.35]), 2)
        11.02
        >>> trend_statistic([0.5, 0.5, 0.5])
        0.0
    """
    _check_mode(mode)
    n = len(values)
    if n < 3:
        raise ValueError(f"`values` must hold at least 3 values; got {n}.")
    sign = 1.0 if mode == "min" else -1.0
    ys = [sign * float(v) for v in values]
    x_mean = (n - 1) / 2
    y_mean = math.fsum(ys) / n
    sxx = math.fsum((i - x_mean) ** 2 for i in range(n))
    slope = math.fsum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys)) / sxx
    rss = math.fsum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(ys))
    se = math.sqrt(rss / (n - 2) / sxx)
    if se <= 1e-12 * max(1.0, abs(y_mean)):
        return 0.0 if slope == 0 else math.copysign(math.inf, slope)
    return slope / se


@dataclass
class CheckReport:
    """What one check found for one pair.

    Args:
        pair: name of the pair.
        check: index of the check (0-based, counted over the whole run).
        train: train-side value.
        val: validation-side value.
        gap: see [`overfitting_gap`][lightning_reg.overfitting.criteria.overfitting_gap].
        rel_gap: see [`relative_gap`][lightning_reg.overfitting.criteria.relative_gap].
        best_val: best validation value so far.
        gl: see [`generalization_loss`][lightning_reg.overfitting.criteria.generalization_loss].
        progress: P_k, or ``None`` before ``k`` train values exist.
        pq: PQ, or ``None`` before ``k`` train values exist.
        up_count: number of checks in a row with validation worse and training better.
        fired: names of the criteria whose condition holds (including patience) at this check.
        trend: [`trend_statistic`][lightning_reg.overfitting.criteria.trend_statistic] of the last ``window``
            validation values (``None`` before
            ``window`` checks).
        train_improving: whether the train values of the last ``window`` checks (fewer at the start) have
            a least-squares slope in the improving direction (``None`` before 2 checks).
        best_check: the check at which ``best_val`` was seen.
        alert: whether this check is an alert for this pair (see
            [`OverfittingCriteria`][lightning_reg.overfitting.criteria.OverfittingCriteria]).
        held_back: why criteria that fired did not make an alert: ``"warmup"``, ``"negative gap"`` or
            ``"training not improving"`` (``None`` otherwise).

    Example:
        >>> CheckReport("loss", 0, 0.1, 0.3, 0.2, 2.0, 0.3, 0.0, None, None, 0, []).alert
        False
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
    trend: float | None = None
    train_improving: bool | None = None
    best_check: int = 0
    alert: bool = False
    held_back: str | None = None

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
    """Normalise ``criteria`` to ``{criterion: {pair: threshold}}`` and validate names and values."""
    if not isinstance(criteria, Mapping) or not criteria:
        raise ValueError(
            f"`criteria` must be a non-empty mapping from a criterion in {list(CRITERIA)} to a threshold; "
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
                    f"Threshold of criterion {name!r} for pair {pair!r} must be a number; got {threshold!r}."
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
                    f"GL or PQ above it signals overfitting); got {threshold!r}."
                )
            elif name in ("gl", "trend") and threshold < 1:
                raise ValueError(
                    f"Threshold of criterion {name!r} for pair {pair!r} is a generalization loss in percent "
                    f"(5.0 means validation 5 % worse than its best); got {threshold!r}, i.e. "
                    f"{threshold:g} %, below the noise of any validation metric. Write "
                    f"{100 * threshold:g} for {100 * threshold:g} %."
                )
        out[name] = {p: float(t) for p, t in per_pair.items()}
    return out


def _least_squares_slope(values: Sequence[float]) -> float:
    n = len(values)
    x_mean = (n - 1) / 2
    y_mean = math.fsum(values) / n
    sxx = math.fsum((i - x_mean) ** 2 for i in range(n))
    return math.fsum((i - x_mean) * (v - y_mean) for i, v in enumerate(values)) / sxx


class OverfittingCriteria:
    """Evaluate overfitting criteria over successive checks of train/validation pairs; decide alerts.

    Criteria (a criterion given as a number applies to every pair; given as a ``{pair: threshold}``
    mapping it applies to the listed pairs only):

    * ``"trend"`` (the default, ``5.0``): validation worse than its best by more than the threshold
      (GL, in percent) and getting worse as a trend:
      [`trend_statistic`][lightning_reg.overfitting.criteria.trend_statistic] of the last ``window``
      validation values at least ``trend_t`` (``TREND_T``, 2.5). A single bad check does not fire it;
    * ``"gl"``: Prechelt's GL above the threshold (percent; fires on a single bad check);
    * ``"pq"``: Prechelt's PQ above the threshold (needs ``strip_length`` train values; P_k is computed
      over the train values of the last ``strip_length`` checks, a sliding window);
    * ``"up"``: validation worse than at the previous check while training improves, ``s`` checks in a row
      (the threshold is ``s``);
    * ``"gap"`` / ``"rel_gap"``: absolute / relative gap above the threshold for ``patience`` checks in
      a row.

    A check is an **alert** for a pair when one of its criteria fires, the check is past the warm-up, and,
    if only validation-getting-worse criteria (trend, GL, PQ, UP) fired, training still improves (the
    least-squares slope of the pair's last ``window`` train values points the improving way) and the gap
    is positive. Otherwise the report says why in ``held_back``. Counters run during warm-up.

    Args:
        pairs: ``{pair_name: mode}`` with mode ``"min"`` or ``"max"``.
        criteria: ``{criterion: threshold or {pair: threshold}}``; default
            [`default_criteria`][lightning_reg.overfitting.criteria.default_criteria]
            (``trend`` 5 % for ``"min"`` pairs, 10 % for ``"max"`` pairs).
        patience: checks in a row the ``gap`` / ``rel_gap`` conditions must hold (``>= 1``).
        strip_length: ``k`` of P_k, the number of checks whose train values make the strip (``>= 2``).
        window: checks of the trend test and of the training-improves condition (``>= 3``).
        warmup: checks at the start that never alert (``>= 0``).
        trend_t: t-statistic the validation trend must reach for the ``trend`` criterion (``> 0``).

    Example:
        >>> crit = OverfittingCriteria({"loss": "min"}, {"trend": 5.0}, window=4)
        >>> train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2]
        >>> val = [1.0, 0.9, 0.85, 0.9, 0.95, 1.0, 1.05]
        >>> [crit.update({"loss": tv})["loss"].alert for tv in zip(train, val)]
        [False, False, False, False, False, True, True]
    """

    def __init__(
        self,
        pairs: Mapping[str, str],
        criteria: Mapping[str, float | Mapping[str, float]] | None = None,
        patience: int = 1,
        strip_length: int = 5,
        window: int = 8,
        warmup: int = 0,
        trend_t: float = TREND_T,
    ) -> None:
        if not isinstance(pairs, Mapping) or not pairs:
            raise ValueError(f"`pairs` must name at least one pair; got {pairs!r}.")
        for name, mode in pairs.items():
            check_choice(f"mode of pair {name!r}", mode, _MODES)
        check_int("patience", patience, low=1)
        check_int("strip_length", strip_length, low=2)
        check_int("window", window, low=3)
        check_int("warmup", warmup, low=0)
        self.trend_t = check_number("trend_t", trend_t, low=0, low_open=True)
        self.pairs = dict(pairs)
        chosen = default_criteria(self.pairs) if criteria is None else criteria
        self.criteria = _validate_criteria(chosen, self.pairs)
        self.patience = patience
        self.strip_length = strip_length
        self.window = window
        self.warmup = warmup
        self.num_checks = 0
        self._state: dict[str, dict[str, Any]] = {p: self._fresh_state() for p in self.pairs}

    @staticmethod
    def _fresh_state() -> dict[str, Any]:
        return {
            "best_val": None,
            "best_check": 0,
            "prev_train": None,
            "prev_val": None,
            "train_window": [],
            "val_window": [],
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
            >>> report = crit.update({"loss": (0.2, 0.56)})["loss"]
            >>> report.fired, report.alert
            (['gl'], True)
        """
        missing = set(self.pairs) - set(values)
        if missing:
            raise KeyError(f"Missing values for pairs {sorted(missing)}; expected {sorted(self.pairs)}.")
        reports = {}
        check = self.num_checks
        for pair, mode in self.pairs.items():
            train, val = (float(x) for x in values[pair])
            st = self._state[pair]
            sign = 1.0 if mode == "min" else -1.0
            if not math.isnan(val) and (
                st["best_val"] is None or math.isnan(st["best_val"]) or sign * val < sign * st["best_val"]
            ):
                st["best_val"], st["best_check"] = val, check
            elif st["best_val"] is None:  # no finite value yet
                st["best_val"], st["best_check"] = val, check
            best = st["best_val"]
            gap = overfitting_gap(train, val, mode)
            rgap = relative_gap(train, val, mode)
            gl = generalization_loss(val, best, mode)
            keep = max(self.strip_length, self.window)
            st["train_window"] = (st["train_window"] + [train])[-keep:]
            st["val_window"] = (st["val_window"] + [val])[-self.window :]
            strip = st["train_window"][-self.strip_length :]
            progress = training_progress(strip, mode) if len(strip) == self.strip_length else None
            pq = progress_quotient(gl, progress) if progress is not None else None
            vals = st["val_window"]
            trend = trend_statistic(vals, mode) if len(vals) == self.window else None
            trains = st["train_window"][-self.window :]
            improving = None if len(trains) < 2 else sign * _least_squares_slope(trains) < 0
            prev_train, prev_val = st["prev_train"], st["prev_val"]
            if prev_val is not None and sign * val > sign * prev_val and sign * train < sign * prev_train:
                st["up_count"] += 1
            else:
                st["up_count"] = 0
            st["prev_train"], st["prev_val"] = train, val
            fired = self._fired(pair, trend, gl, pq, {"gap": gap, "rel_gap": rgap})
            alert, held_back = self._decide(fired, check, gap, improving)
            reports[pair] = CheckReport(
                pair, check, train, val, gap, rgap, best, gl, progress, pq, st["up_count"], fired,
                trend, improving, st["best_check"], alert, held_back,
            )  # fmt: skip
        self.num_checks += 1
        return reports

    def _fired(
        self, pair: str, trend: float | None, gl: float, pq: float | None, gaps: Mapping[str, float]
    ) -> list[str]:
        """Return the criteria of ``pair`` whose condition holds at this check (and count the gap streaks)."""
        st = self._state[pair]
        fired = []
        thr = self._threshold("trend", pair)
        if thr is not None and trend is not None and trend >= self.trend_t and gl > thr:
            fired.append("trend")
        thr = self._threshold("gl", pair)
        if thr is not None and gl > thr:
            fired.append("gl")
        thr = self._threshold("pq", pair)
        if thr is not None and pq is not None and pq > thr:
            fired.append("pq")
        thr = self._threshold("up", pair)
        if thr is not None and st["up_count"] >= thr:
            fired.append("up")
        for crit in ("gap", "rel_gap"):
            thr = self._threshold(crit, pair)
            if thr is None:
                continue
            count = f"{crit}_count"
            st[count] = st[count] + 1 if gaps[crit] > thr else 0
            if st[count] >= self.patience:
                fired.append(crit)
        return fired

    def _decide(
        self, fired: list[str], check: int, gap: float, improving: bool | None
    ) -> tuple[bool, str | None]:
        if not fired:
            return False, None
        if check < self.warmup:
            return False, "warmup"
        if any(c not in DIVERGENCE_CRITERIA for c in fired):  # a gap above its (positive) threshold
            return True, None
        if not gap > 0:
            return False, "negative gap"
        if not improving:
            return False, "training not improving"
        return True, None

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
        """Restore the state saved by ``state_dict``.

        Args:
            state: a dict from ``state_dict``.

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
                restored["val_window"] = list(restored["val_window"])
                self._state[pair] = restored
