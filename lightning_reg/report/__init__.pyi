"""Public names of ``lightning_reg.report``: read by lazy_loader, editors and type checkers."""

from .data import MissingMetricsError as MissingMetricsError
from .data import load_metrics as load_metrics
from .plots import render_report as render_report

__all__ = [
    "MissingMetricsError",
    "load_metrics",
    "render_report",
]
