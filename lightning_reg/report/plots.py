r"""Plots of a training run from its logs: train vs validation curves, gradient norms, drop-path rate.

Reads a ``CSVLogger`` directory (``metrics.csv``) or, when there is no CSV,
TensorBoard event files, and writes PNG files with matplotlib's headless ``Agg`` backend. matplotlib (and
tensorboard, for event files) are imported only when a report is made, so ``import lightning_reg`` does not
need them. Every plotting function returns the series it drew, so callers (and tests) can check them.

Command line (``lightning_reg.report.cli``):

```bash
python -m lightning_reg.report LOG_DIR [--out DIR] [--best-epoch N] [--pair NAME=TRAIN_KEY,VAL_KEY ...]
```

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n0,9,1.0,\n0,9,,1.2\n")
    >>> plots = render_report(d)
    >>> sorted(plots)
    ['curves']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lightning_reg._shared.keys import Keys
from lightning_reg.report.data import (
    MissingMetricsError,
    ReportKeys,
    RunMetrics,
    best_epoch_of,
    load_metrics,
)
from lightning_reg.report.series import PairCurves, train_val_series

if TYPE_CHECKING:  # matplotlib is imported only when a report is made
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PlotResult", "plot_drop_path", "plot_grad_norms", "plot_train_val", "render_report"]


@dataclass
class PlotResult:
    """A written figure and exactly the data drawn on it.

    Attributes:
        path: the PNG file.
        series: name -> (x values, y values) of every line drawn (for curves also ``"<pair>/gap"``,
            the shaded validation-minus-train difference on common epochs).
        markers: name -> x positions of markers (``"alerts"``, ``"best_epoch"``, ``"first_alert"``).
        legends: panel name -> the entries of its legend, in order.
    """

    path: Path
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    markers: dict[str, list[float]] = field(default_factory=dict)
    legends: dict[str, list[str]] = field(default_factory=dict)


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_train_val(
    metrics: RunMetrics,
    out_path: str | Path,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    alert_key: str | None = Keys.OVERFIT_ALERT,
    best_epoch: int | None = None,
    title: str | None = None,
) -> PlotResult:
    r"""Train vs validation curves per epoch, the gap between them shaded, alerts and best epoch marked.

    One panel per pair whose two keys were both logged (at least one pair must be). The series are
    ``train_val_series``' (see ``lightning_reg.report.series`` for its rules): values per epoch (the last
    value logged in each) over the fit's epochs only, so a ``trainer.validate()`` after ``fit`` is not drawn
    as one more epoch; the gap is ``OverfittingMonitor``'s ``overfit/<pair>_gap`` when logged (drawn on
    the panel's right axis, shaded down to zero), else the band between the two curves.

    Args:
        metrics: from ``load_metrics``.
        out_path: PNG file to write.
        pairs: name -> (train key, validation key); default ``DEFAULT_PAIRS``.
        alert_key: metric that is non-zero at epochs with an overfitting alert of any pair; ignored if not
            logged; ``None`` to skip alerts. Each panel marks the alerts of its own pair when
            ``OverfittingMonitor`` logged them (``overfit/<pair>_alert``), else these: red triangles on
            the validation curve, the first one also as a dotted line; both are in the legend.
        best_epoch: the epoch whose weights were restored (a dashed green line); ``None`` for none.
        title: figure title.

    Returns:
        The figure's path and the series drawn (``"<train key>"``, ``"<val key>"``, ``"<pair>/gap"``)
        and markers (``"alerts"``, ``"first_alert"``: any pair; ``"<pair>/alerts"``: the epochs marked in
        that pair's panel; ``"best_epoch"``).

    Raises:
        MissingMetricsError: no pair has both keys logged.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> csv_text = "epoch,step,train_loss,val_loss\n0,9,1.0,1.5\n1,19,0.5,1.25\n"
        >>> _ = (d / "metrics.csv").write_text(csv_text)
        >>> r = plot_train_val(load_metrics(d), d / "curves.png", best_epoch=1)
        >>> r.series["loss/gap"]
        ([0.0, 1.0], [0.5, 0.75])
    """
    data = train_val_series(metrics, pairs, alert_key)
    plt = _pyplot()
    result = PlotResult(Path(out_path))
    if data.alerts is not None:
        result.markers["alerts"] = data.alerts
        result.markers["first_alert"] = data.alerts[:1]
    if best_epoch is not None:
        result.markers["best_epoch"] = [float(best_epoch)]
    n = len(data.pairs)
    fig, axes = plt.subplots(n, 1, figsize=(7, 3.2 * n), sharex=True, squeeze=False)
    for ax, curves in zip(axes[:, 0], data.pairs.values()):
        result.series[curves.train_key] = curves.train
        result.series[curves.val_key] = curves.val
        result.series[f"{curves.name}/gap"] = curves.gap
        if curves.alerts is not None:
            result.markers[f"{curves.name}/alerts"] = curves.alerts
        result.legends[curves.name] = _draw_pair(ax, curves, best_epoch)
    axes[-1, 0].set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    _save(fig, result.path)
    return result


def _draw_pair(ax: Axes, curves: PairCurves, best_epoch: int | None) -> list[str]:
    """Draw one pair's panel; return its legend entries."""
    (tx, ty), (vx, vy) = curves.train, curves.val
    ax.plot(tx, ty, color="tab:blue", marker=".", label=curves.train_key)
    ax.plot(vx, vy, color="tab:orange", marker=".", label=curves.val_key)
    extra: list[Artist] = []  # handles drawn on the right axis
    if curves.gap_key is not None:
        right = ax.twinx()
        gx, gy = curves.gap
        (line,) = right.plot(
            gx, gy, color="tab:red", linestyle="--", label=f"gap the monitor uses ({curves.gap_key})"
        )
        right.fill_between(gx, [0.0] * len(gy), gy, color="tab:red", alpha=0.1)
        right.set_ylabel("gap")
        extra.append(line)
    else:
        train_at = dict(zip(tx, ty))
        common = [e for e in vx if e in train_at]
        upper = [v for e, v in zip(vx, vy) if e in train_at]
        lower = [train_at[e] for e in common]
        ax.fill_between(common, lower, upper, color="tab:red", alpha=0.15, label="train/val gap")
    alerts = curves.alerts or []
    if alerts:
        val_at = dict(zip(vx, vy))
        marked = [e for e in alerts if e in val_at]
        ax.scatter(
            marked,
            [val_at[e] for e in marked],
            marker="v",
            color="red",
            zorder=5,
            label=f"overfitting alert ({curves.alert_key})",
        )
        ax.axvline(
            alerts[0], color="red", linestyle=":", linewidth=1, label=f"first alert (epoch {alerts[0]:g})"
        )
    if best_epoch is not None:
        ax.axvline(best_epoch, color="tab:green", linestyle="--", label=f"restored best epoch {best_epoch}")
    ax.set_ylabel(curves.name)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    legend = ax.legend(handles + extra, labels + [h.get_label() for h in extra], fontsize=8)
    return [t.get_text() for t in legend.get_texts()]


def _plot_over_steps(
    metrics: RunMetrics,
    out_path: str | Path,
    keys: Sequence[str],
    labels: Sequence[str],
    ylabel: str,
    purpose: str,
    logy: bool,
    title: str | None,
    mark_clipped: bool = False,
) -> PlotResult:
    if not any(k in metrics.series for k in keys):
        metrics.require(*keys, purpose=purpose)
    plt = _pyplot()
    result = PlotResult(Path(out_path))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label, style in zip(keys, labels, ("-", "--")):
        if key not in metrics.series:
            continue
        s = metrics.series[key]
        xs, ys = list(s.steps), list(s.values)
        ax.plot(xs, ys, linestyle=style, label=f"{label} ({key})")
        result.series[key] = (xs, ys)
    if mark_clipped and len(result.series) == 2:
        (px, py), (qx, qy) = result.series.values()
        post = dict(zip(qx, qy))
        clipped = [(x, post[x]) for x, y in zip(px, py) if x in post and post[x] < y * (1 - 1e-6)]
        result.markers["clipped"] = [x for x, _ in clipped]
        if clipped:
            ax.scatter(
                *zip(*clipped), marker="x", color="red", zorder=5, label=f"clipped ({len(clipped)} steps)"
            )
    if logy and all(v > 0 for _, ys in result.series.values() for v in ys if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, result.path)
    return result


def plot_grad_norms(
    metrics: RunMetrics,
    out_path: str | Path,
    pre_key: str = Keys.GRAD_CLIP_NORM_PRE,
    post_key: str | None = Keys.GRAD_CLIP_NORM_POST,
    total_key: str | None = Keys.GRAD_NORM_TOTAL,
    title: str | None = None,
) -> PlotResult:
    r"""Total gradient norm over steps, before and after clipping, log scale (if all values are positive).

    Draws ``pre_key`` (or, if it was not logged, ``total_key``: a monitor's norm, which is the
    pre-clip norm) and, dashed, ``post_key`` when logged; steps where the post-clip norm is smaller are
    marked with red crosses (``markers["clipped"]``).

    Args:
        metrics: from [`load_metrics`][lightning_reg.report.data.load_metrics].
        out_path: PNG file to write.
        pre_key: norm before clipping.
        post_key: norm after clipping.
        total_key: norm from a gradient monitor, the fallback for ``pre_key``.
        title: figure title.

    Returns:
        The figure's path and the series drawn, keyed by metric name (x = global step).

    Raises:
        MissingMetricsError: none of the keys was logged.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "metrics.csv").write_text("epoch,step,grad/norm_total\n0,0,3.0\n0,1,2.0\n")
        >>> plot_grad_norms(load_metrics(d), d / "g.png").series["grad/norm_total"]
        ([0.0, 1.0], [3.0, 2.0])
    """
    first = pre_key if pre_key in metrics.series or not total_key else total_key
    keys = [first] + ([post_key] if post_key else [])
    return _plot_over_steps(
        metrics,
        out_path,
        keys,
        ["before clipping", "after clipping"],
        "total gradient norm",
        "gradient norms",
        True,
        title,
        mark_clipped=True,
    )


def plot_drop_path(
    metrics: RunMetrics,
    out_path: str | Path,
    key: str = Keys.DROP_PATH_MAX_RATE,
    title: str | None = None,
) -> PlotResult:
    r"""Drop-path (stochastic depth) rate over steps.

    Args:
        metrics: from [`load_metrics`][lightning_reg.report.data.load_metrics].
        out_path: PNG file to write.
        key: the logged rate.
        title: figure title.

    Returns:
        The figure's path and the series drawn (x = global step).

    Raises:
        MissingMetricsError: ``key`` was not logged.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "metrics.csv").write_text("epoch,step,stochastic_depth/max_rate\n0,0,0.0\n0,1,0.1\n")
        >>> plot_drop_path(load_metrics(d), d / "dp.png").series["stochastic_depth/max_rate"]
        ([0.0, 1.0], [0.0, 0.1])
    """
    return _plot_over_steps(
        metrics, out_path, [key], ["drop-path rate"], "drop-path rate", "drop-path rate", False, title
    )


def render_report(
    log_dir: str | Path,
    out_dir: str | Path | None = None,
    keys: ReportKeys | None = None,
    best_epoch: int | None = None,
    title: str | None = None,
    skipped: dict[str, str] | None = None,
    best_from: str | None = None,
) -> dict[str, PlotResult]:
    r"""Write every plot the logs allow: ``curves.png``, ``grad_norms.png``, ``drop_path.png``.

    A plot whose metrics were not logged is skipped (and absent from the result); if no plot can be
    drawn at all, the error lists, per plot, what was missing and what was found.

    Args:
        log_dir: the run's log directory (see [`load_metrics`][lightning_reg.report.data.load_metrics]).
        out_dir: where to write the PNGs (default: ``<log_dir>/plots``).
        keys: metric names to look for (default [`ReportKeys`][lightning_reg.report.data.ReportKeys]).
        best_epoch: restored best epoch to mark; default: from ``best_from``, else the last value of
            ``keys.best_epoch`` if that is set and logged (``EarlyStopping`` logs
            ``early_stopping/restored_epoch`` when it restores), else no mark.
        title: prefix of every figure title.
        skipped: if given, filled with plot name -> why it was skipped.
        best_from: ``"<key>:min"`` or ``"<key>:max"``: mark the epoch
            [`best_epoch_of`][lightning_reg.report.data.best_epoch_of] finds (what
            an early-stopping callback with ``min_delta=0`` monitoring that key restores).

    Returns:
        ``{"curves" | "grad_norms" | "drop_path": PlotResult}`` for the plots written.

    Raises:
        MissingMetricsError: none of the plots' metrics were logged (the message lists what was found).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> csv_text = "epoch,step,train_loss,val_loss\n0,9,1.0,1.5\n1,19,0.5,1.25\n"
        >>> _ = (d / "metrics.csv").write_text(csv_text)
        >>> sorted(render_report(d))
        ['curves']
    """
    keys = keys or ReportKeys()
    metrics = load_metrics(log_dir)
    out = Path(out_dir) if out_dir is not None else Path(log_dir) / "plots"
    if best_epoch is None and best_from:
        key, _, mode = best_from.rpartition(":")
        if mode not in ("min", "max") or not key:
            raise ValueError(f"best_from must be '<key>:min' or '<key>:max', got {best_from!r}")
        best_epoch = best_epoch_of(metrics, key, "min" if mode == "min" else "max")
    if best_epoch is None and keys.best_epoch and keys.best_epoch in metrics.series:
        vals = [v for v in metrics.series[keys.best_epoch].values if not math.isnan(v)]
        best_epoch = int(vals[-1]) if vals else None

    def _t(what: str) -> str:
        return f"{title}: {what}" if title else what

    jobs = {
        "curves": lambda: plot_train_val(
            metrics, out / "curves.png", keys.pairs, keys.alert, best_epoch, _t("train vs validation")
        ),
        "grad_norms": lambda: plot_grad_norms(
            metrics,
            out / "grad_norms.png",
            keys.grad_pre,
            keys.grad_post,
            keys.grad_total,
            _t("gradient norm"),
        ),
        "drop_path": lambda: plot_drop_path(
            metrics, out / "drop_path.png", keys.drop_path, _t("drop-path rate")
        ),
    }
    results: dict[str, PlotResult] = {}
    reasons: dict[str, str] = {}
    for name, job in jobs.items():
        try:
            results[name] = job()
        except MissingMetricsError as err:
            reasons[name] = str(err)
    if not results:
        lines = "\n".join(f"- {n}: {r}" for n, r in reasons.items())
        raise MissingMetricsError(f"nothing to plot in {str(log_dir)!r}:\n{lines}")
    if skipped is not None:
        skipped.update(reasons)
    return results
