r"""The series of the train/validation report, computed from the logs apart from any drawing.

``train_val_series`` turns a run's metrics into what the curves figure shows, per pair: the train and
validation curves per epoch, the gap, and the epochs to mark as overfitting alerts. It imports no
plotting library, so it can be tested (and reused) alone; ``plot_train_val`` only draws its result.

Two rules decide what is drawn:

* **Only the fit's epochs.** A ``trainer.validate()`` (or ``test()``) after ``fit`` logs its values at the
  epoch after the last trained one, and Lightning's loggers cannot tell them apart from a fit's validation.
  The last epoch of the fit is the last epoch at which a key of the training loop was logged: a pair's train
  key, ``OverfittingMonitor``'s ``overfit/alert`` or ``EarlyStopping``'s ``early_stopping/best_epoch`` (both
  logged at every check of a fit, never by ``validate()``). Validation values logged at a later epoch are
  left out (and listed in ``TrainValSeries.after_fit``). Log the train keys with ``on_epoch=True`` (as
  ``OverfittingMonitor`` asks), so every trained epoch has one.
* **The gap the monitor uses.** When ``OverfittingMonitor`` logged ``overfit/<pair>_gap`` for a pair, that
  is the gap drawn: with ``probe`` set, its train side is the eval-mode probe, not the train-mode value
  logged by ``training_step``, and its sign follows the pair's mode (positive means overfitting).
  Otherwise the gap is validation minus train on the epochs both were logged.

Example:
    >>> import tempfile, pathlib
    >>> from lightning_reg.report.data import load_metrics
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rows = "epoch,step,train_loss,val_loss\n0,9,1.0,1.5\n1,19,0.5,1.25\n2,20,,1.25\n"
    >>> _ = (d / "metrics.csv").write_text(rows)  # the last row: trainer.validate() after fit
    >>> s = train_val_series(load_metrics(d), {"loss": ("train_loss", "val_loss")})
    >>> s.pairs["loss"].val, s.after_fit
    (([0.0, 1.0], [1.5, 1.25]), {'val_loss': [2.0]})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lightning_reg._shared.keys import Keys
from lightning_reg.report.data import DEFAULT_PAIRS, MetricSeries, MissingMetricsError, RunMetrics

__all__ = ["PairCurves", "TrainValSeries", "last_fit_epoch", "train_val_series"]

Curve = tuple[list[float], list[float]]


@dataclass(frozen=True)
class PairCurves:
    """What the curves figure draws for one train/validation pair (x = epoch).

    Attributes:
        name: the pair's name.
        train_key: its train metric.
        val_key: its validation metric.
        train: epochs and train values.
        val: epochs and validation values.
        gap: epochs and the gap drawn (see ``gap_key``).
        gap_key: ``overfit/<name>_gap`` when the gap is ``OverfittingMonitor``'s; ``None`` when it is
            validation minus train on the epochs both were logged.
        alerts: epochs to mark as alerts (this pair's own, else any pair's); ``None`` when no alert key
            was logged or alerts are off.
        alert_key: the key ``alerts`` were read from.
    """

    name: str
    train_key: str
    val_key: str
    train: Curve
    val: Curve
    gap: Curve
    gap_key: str | None = None
    alerts: list[float] | None = None
    alert_key: str | None = None


@dataclass(frozen=True)
class TrainValSeries:
    """The curves figure's data: per pair (whose two keys were logged), in the order given.

    Attributes:
        pairs: name -> ``PairCurves``.
        alerts: epochs with an alert of any pair (``None`` when that key was not logged or alerts are off).
        last_epoch: the last epoch of the fit (``None`` when no key of the training loop carries epochs).
        after_fit: validation key -> epochs logged after the fit and left out.
    """

    pairs: dict[str, PairCurves]
    alerts: list[float] | None = None
    last_epoch: float | None = None
    after_fit: dict[str, list[float]] = field(default_factory=dict)


def last_fit_epoch(metrics: RunMetrics, keys: Iterable[str]) -> float | None:
    r"""Return the last epoch at which any of ``keys`` (keys of the training loop) was logged.

    Args:
        metrics: from ``load_metrics``.
        keys: keys logged during training only; those not in ``metrics`` are ignored.

    Returns:
        The epoch, or ``None`` if none of ``keys`` was logged with an epoch.

    Example:
        >>> series = {"train_loss": MetricSeries((9.0, 19.0), (0.0, 1.0), (1.0, 0.5))}
        >>> last_fit_epoch(RunMetrics([], series), ["train_loss", "overfit/alert"])
        1.0
    """
    epochs = [
        e for k in keys if k in metrics.series for e in metrics.series[k].epochs if not math.isnan(e)
    ]
    return max(epochs) if epochs else None


def _per_epoch(series: MetricSeries, last_epoch: float | None) -> Curve:
    """Epochs (as floats) and the last value logged in each, up to ``last_epoch``."""
    epochs, values = series.per_epoch()
    keep = [(float(e), v) for e, v in zip(epochs, values) if last_epoch is None or e <= last_epoch]
    return [e for e, _ in keep], [v for _, v in keep]


def _alert_epochs(series: MetricSeries, last_epoch: float | None) -> list[float]:
    epochs, values = _per_epoch(series, last_epoch)
    return [e for e, v in zip(epochs, values) if v > 0]


def _gap(metrics: RunMetrics, name: str, train: Curve, val: Curve, last_epoch: float | None) -> Curve:
    key = Keys.overfit(name, "gap")
    if key in metrics.series:
        return _per_epoch(metrics.series[key], last_epoch)
    train_at = dict(zip(*train))
    common = [e for e in val[0] if e in train_at]
    return common, [v - train_at[e] for e, v in zip(*val) if e in train_at]


def train_val_series(
    metrics: RunMetrics,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    alert_key: str | None = Keys.OVERFIT_ALERT,
) -> TrainValSeries:
    r"""Compute the curves figure's series: per pair, train and validation per epoch, the gap, the alerts.

    Values are per epoch (the last value logged in each), limited to the fit's epochs; the gap is
    ``OverfittingMonitor``'s when logged (see the module's rules).

    Args:
        metrics: from ``load_metrics``.
        pairs: name -> (train key, validation key); default ``DEFAULT_PAIRS``. Pairs missing a key are
            left out.
        alert_key: the any-pair alert key; a pair's own ``overfit/<pair>_alert`` is used where logged.
            ``None``: no alerts.

    Returns:
        The series.

    Raises:
        MissingMetricsError: no pair has both keys logged.

    Example:
        >>> import tempfile, pathlib
        >>> from lightning_reg.report.data import load_metrics
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> rows = "epoch,step,train_loss,val_loss,overfit/loss_gap\n0,9,1.0,1.5,0.25\n1,19,0.5,1.25,0.5\n"
        >>> _ = (d / "metrics.csv").write_text(rows)
        >>> curves = train_val_series(load_metrics(d)).pairs["loss"]
        >>> curves.gap, curves.gap_key
        (([0.0, 1.0], [0.25, 0.5]), 'overfit/loss_gap')
    """
    pairs = dict(DEFAULT_PAIRS if pairs is None else pairs)
    present = {n: kv for n, kv in pairs.items() if kv[0] in metrics.series and kv[1] in metrics.series}
    if not present:
        wanted = [k for kv in pairs.values() for k in kv]
        raise MissingMetricsError(
            f"cannot plot train/validation curves: no pair {list(pairs.values())} has both keys logged "
            f"(missing: {[k for k in wanted if k not in metrics.series]}) in "
            f"{[str(s) for s in metrics.sources]}; found: {sorted(metrics.series) or 'no metrics'}"
        )
    # OverfittingMonitor logs its any-pair alert and EarlyStopping its best epoch at every check of a fit
    last = last_fit_epoch(metrics, [*(t for t, _ in present.values()), Keys.OVERFIT_ALERT, Keys.BEST_EPOCH])
    alerts = None
    if alert_key and alert_key in metrics.series:
        alerts = _alert_epochs(metrics.series[alert_key], last)
    out: dict[str, PairCurves] = {}
    after_fit: dict[str, list[float]] = {}
    for name, (tk, vk) in present.items():
        train = _per_epoch(metrics.series[tk], last)
        val = _per_epoch(metrics.series[vk], last)
        later = [float(e) for e in metrics.series[vk].per_epoch()[0] if last is not None and e > last]
        if later:
            after_fit[vk] = later
        own_key = Keys.overfit(name, "alert")
        own = alert_key is not None and own_key in metrics.series
        panel_alerts = _alert_epochs(metrics.series[own_key], last) if own else alerts
        gap_key = Keys.overfit(name, "gap")
        out[name] = PairCurves(
            name, tk, vk, train, val, _gap(metrics, name, train, val, last),
            gap_key if gap_key in metrics.series else None,
            panel_alerts, own_key if own else (alert_key if alerts is not None else None),
        )  # fmt: skip
    return TrainValSeries(out, alerts, last, after_fit)
