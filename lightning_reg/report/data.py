r"""Read a run's logged metrics (CSVLogger ``metrics.csv`` or TensorBoard event files) without Lightning.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.csv").write_text("epoch,step,val_loss\n0,9,1.5\n1,19,1.25\n")
    >>> best_epoch_of(load_metrics(d), "val_loss")
    1
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lightning_reg._shared.keys import Keys

__all__ = [
    "DEFAULT_PAIRS",
    "MetricSeries",
    "MissingMetricsError",
    "ReportKeys",
    "RunMetrics",
    "best_epoch_of",
    "load_metrics",
]

#: Train/validation metric pairs drawn by ``plot_train_val`` (name -> (train key, validation key)).
DEFAULT_PAIRS: dict[str, tuple[str, str]] = {
    "loss": ("train_loss", "val_loss"),
    "acc": ("train_acc", "val_acc"),
}


class MissingMetricsError(ValueError):
    """The log directory lacks the metrics a plot needs; the message lists what was found."""


@dataclass(frozen=True)
class MetricSeries:
    """One logged metric: parallel tuples of global step, epoch (``nan`` if unknown) and value."""

    steps: tuple[float, ...]
    epochs: tuple[float, ...]
    values: tuple[float, ...]

    def per_epoch(self) -> tuple[list[int], list[float]]:
        """Epochs (ascending) and the last value logged in each; entries without an epoch are dropped."""
        last: dict[int, float] = {}
        for e, v in zip(self.epochs, self.values):
            if not math.isnan(e):
                last[int(e)] = v
        epochs = sorted(last)
        return epochs, [last[e] for e in epochs]


@dataclass
class RunMetrics:
    """All scalar metrics of one run, keyed by metric name, and the files they were read from."""

    sources: list[Path]
    series: dict[str, MetricSeries]

    def require(self, *keys: str, purpose: str) -> None:
        """Raise ``MissingMetricsError`` naming the missing ``keys`` and listing the found ones."""
        missing = [k for k in keys if k not in self.series]
        if missing:
            raise MissingMetricsError(
                f"cannot plot {purpose}: metric(s) {missing} not found in {[str(s) for s in self.sources]}; "
                f"found: {sorted(self.series) or 'no metrics'}"
            )


@dataclass
class ReportKeys:
    """Metric names the report looks for (defaults: the keys lightning-reg's callbacks log, from ``Keys``).

    Attributes:
        pairs: train/validation pairs for the curves figure (name -> (train key, validation key)); a pair
            named like an ``OverfittingMonitor`` pair shows that pair's own alerts
            (``overfit/<name>_alert``), else the any-pair ``alert``.
        alert: overfitting alert flag of any pair (non-zero at an alerted epoch).
        best_epoch: a logged metric holding the restored best epoch (``EarlyStopping`` logs
            ``early_stopping/restored_epoch`` when it restores; ``None``: never read one).
        grad_pre: total gradient norm before clipping (``GradientClipping``).
        grad_post: total gradient norm after clipping (``GradientClipping``).
        grad_total: total gradient norm (``GradientMonitor``; drawn when ``grad_pre`` was not logged).
        drop_path: current maximum drop-path rate (``StochasticDepthScheduler``).
    """

    pairs: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(DEFAULT_PAIRS))
    alert: str = Keys.OVERFIT_ALERT
    best_epoch: str | None = Keys.RESTORED_EPOCH
    grad_pre: str = Keys.GRAD_CLIP_NORM_PRE
    grad_post: str = Keys.GRAD_CLIP_NORM_POST
    grad_total: str = Keys.GRAD_NORM_TOTAL
    drop_path: str = Keys.DROP_PATH_MAX_RATE

    @staticmethod
    def pair_alert(pair: str) -> str:
        """Return the per-pair alert key ``OverfittingMonitor`` logs for ``pair``.

        Example:
            >>> ReportKeys.pair_alert("loss")
            'overfit/loss_alert'
        """
        return Keys.overfit(pair, "alert")


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _find(log_dir: Path, pattern: str) -> list[Path]:
    direct = sorted(log_dir.glob(pattern))
    return direct if direct else sorted(log_dir.rglob(pattern))


def _read_csv(path: Path) -> dict[str, MetricSeries]:
    cols: dict[str, tuple[list[float], list[float], list[float]]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            step = _float(row.get("step") or "")
            epoch = _float(row.get("epoch") or "")
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None or cell in (None, ""):
                    continue
                s, e, v = cols.setdefault(key, ([], [], []))
                s.append(step)
                e.append(epoch)
                v.append(_float(cell))
            if row.get("epoch") not in (None, ""):
                s, e, v = cols.setdefault("epoch", ([], [], []))
                s.append(step)
                e.append(epoch)
                v.append(epoch)
    return {k: MetricSeries(tuple(s), tuple(e), tuple(v)) for k, (s, e, v) in cols.items()}


def _read_tensorboard(paths: Sequence[Path]) -> dict[str, MetricSeries]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:  # pragma: no cover - tensorboard is in the dev extra
        raise ImportError("reading TensorBoard event files needs `pip install tensorboard`") from err
    raw: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            raw.setdefault(tag, []).extend((float(ev.step), float(ev.value)) for ev in acc.Scalars(tag))
    # Lightning logs the epoch as a scalar with every log call: map each step to its epoch.
    epoch_at = {s: v for s, v in sorted(raw.get("epoch", []))}
    out = {}
    for tag, events in raw.items():
        events.sort(key=lambda sv: sv[0])
        steps = tuple(s for s, _ in events)
        out[tag] = MetricSeries(
            steps, tuple(epoch_at.get(s, math.nan) for s in steps), tuple(v for _, v in events)
        )
    return out


def load_metrics(log_dir: str | Path) -> RunMetrics:
    r"""Read every scalar metric of one run from ``log_dir``.

    Uses ``metrics.csv`` (a CSVLogger version directory, or its only ``metrics.csv`` below ``log_dir``);
    without one, every TensorBoard ``events.out.tfevents.*`` file below ``log_dir``.

    Args:
        log_dir: a logger's run directory (e.g. ``lightning_logs/version_0``) or a parent holding one run.

    Returns:
        The metrics, keyed by name, each with step, epoch and value.

    Raises:
        FileNotFoundError: no metrics file below ``log_dir``.
        MissingMetricsError: several ``metrics.csv`` files below ``log_dir`` (pass one run's directory).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "metrics.csv").write_text("epoch,step,val_loss\n0,9,1.5\n1,19,1.25\n")
        >>> load_metrics(d).series["val_loss"].values
        (1.5, 1.25)
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log directory {str(log_dir)!r} does not exist")
    csvs = _find(log_dir, "metrics.csv")
    if len(csvs) > 1:
        shown = ", ".join(str(p.parent) for p in csvs[:10])
        more = f" (and {len(csvs) - 10} more)" if len(csvs) > 10 else ""
        raise MissingMetricsError(
            f"{len(csvs)} runs below {str(log_dir)!r}; pass one run's directory: {shown}{more}"
        )
    if csvs:
        return RunMetrics([csvs[0]], _read_csv(csvs[0]))
    events = _find(log_dir, "events.out.tfevents.*")
    if events:
        return RunMetrics(events, _read_tensorboard(events))
    found = sorted(str(p.relative_to(log_dir)) for p in log_dir.rglob("*") if p.is_file())[:20]
    raise FileNotFoundError(
        f"no metrics.csv (CSVLogger) or events.out.tfevents.* (TensorBoardLogger) below {str(log_dir)!r}; "
        f"files found: {found or 'none'}"
    )


def best_epoch_of(metrics: RunMetrics, key: str, mode: Literal["min", "max"] = "min") -> int:
    r"""Return the first epoch with the best per-epoch value of ``key`` (ties: the earliest).

    This is the epoch an early-stopping callback with ``min_delta=0`` monitoring ``key`` restores.

    Args:
        metrics: from [`load_metrics`][lightning_reg.report.data.load_metrics].
        key: the monitored metric.
        mode: ``"min"`` or ``"max"``.

    Raises:
        MissingMetricsError: ``key`` was not logged (with a value) at any epoch.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "metrics.csv").write_text("epoch,step,val_loss\n0,9,1.5\n1,19,1.25\n2,29,1.25\n")
        >>> best_epoch_of(load_metrics(d), "val_loss")
        1
    """
    metrics.require(key, purpose="the best epoch")
    epochs, values = metrics.series[key].per_epoch()
    pairs = [(e, v) for e, v in zip(epochs, values) if not math.isnan(v)]
    if not pairs:
        metrics.require(f"{key} (with a value)", purpose="the best epoch")
    sign = 1.0 if mode == "min" else -1.0
    best = pairs[0]
    for e, v in pairs[1:]:
        if sign * v < sign * best[1]:
            best = (e, v)
    return best[0]
