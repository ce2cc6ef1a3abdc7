"""Overfitting criteria over train/validation histories and the ``OverfittingMonitor`` callback."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.overfitting.callback import *
    from lightning_reg.overfitting.criteria import *

__getattr__, __dir__, __all__ = export(__name__, core=['criteria'], lightning=['callback'])
