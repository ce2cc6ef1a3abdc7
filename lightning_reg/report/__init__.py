"""Plots of a training run from its logs (CSV or TensorBoard); ``python -m lightning_reg.report``."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.report.cli import *
    from lightning_reg.report.data import *
    from lightning_reg.report.plots import *
    from lightning_reg.report.series import *

__getattr__, __dir__, __all__ = export(__name__, core=['data', 'series', 'plots', 'cli'])
