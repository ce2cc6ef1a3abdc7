"""``python -m lightning_reg.report LOG_DIR [--out DIR]``: write a run's plots as PNG files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_reg.report.data import DEFAULT_PAIRS, MissingMetricsError, ReportKeys
from lightning_reg.report.plots import render_report

__all__ = ["main"]


def _parse_pair(text: str) -> tuple[str, tuple[str, str]]:
    try:
        name, rest = text.split("=", 1)
        train, val = rest.split(",", 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected NAME=TRAIN_KEY,VAL_KEY, got {text!r}") from err
    return name, (train, val)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lightning_reg.report LOG_DIR [--out DIR] ...``; returns the exit code.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Example:
        >>> main(["/nonexistent"])
        2
    """
    d = ReportKeys()
    p = argparse.ArgumentParser(
        prog="python -m lightning_reg.report", description="Write the plots of a training run from its logs."
    )
    p.add_argument("log_dir", help="run directory of a CSVLogger (metrics.csv) or TensorBoardLogger")
    p.add_argument("--out", default=None, help="output directory (default: LOG_DIR/plots)")
    p.add_argument("--best-epoch", type=int, default=None, help="restored best epoch to mark")
    p.add_argument(
        "--best-from",
        default=None,
        metavar="KEY:MODE",
        help="mark the best epoch of KEY (min|max), e.g. val_loss:min",
    )
    p.add_argument("--title", default=None, help="figure title prefix")
    p.add_argument(
        "--pair",
        type=_parse_pair,
        action="append",
        default=None,
        help=f"NAME=TRAIN_KEY,VAL_KEY (repeatable; default {DEFAULT_PAIRS})",
    )
    p.add_argument("--alert-key", default=d.alert)
    p.add_argument("--best-epoch-key", default=d.best_epoch)
    p.add_argument("--grad-pre-key", default=d.grad_pre)
    p.add_argument("--grad-post-key", default=d.grad_post)
    p.add_argument("--grad-total-key", default=d.grad_total)
    p.add_argument("--drop-path-key", default=d.drop_path)
    a = p.parse_args(argv)
    keys = ReportKeys(
        pairs=dict(a.pair) if a.pair else dict(DEFAULT_PAIRS),
        alert=a.alert_key,
        best_epoch=a.best_epoch_key,
        grad_pre=a.grad_pre_key,
        grad_post=a.grad_post_key,
        grad_total=a.grad_total_key,
        drop_path=a.drop_path_key,
    )
    skipped: dict[str, str] = {}
    try:
        results = render_report(a.log_dir, a.out, keys, a.best_epoch, a.title, skipped, a.best_from)
    except (MissingMetricsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in ("curves", "grad_norms", "drop_path"):
        print(f"{name}: {results[name].path}" if name in results else f"{name}: skipped ({skipped[name]})")
    return 0
