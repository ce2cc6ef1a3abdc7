"""Overfitting criteria over train/validation histories, the eval-mode probe and ``OverfittingMonitor``."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.overfitting.callback import *
    from lightning_reg.overfitting.criteria import *
    from lightning_reg.overfitting.probe import *

__getattr__, __dir__, __all__ = export(__name__, core=['criteria'], lightning=['probe', 'callback'])
