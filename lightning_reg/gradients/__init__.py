"""Fused, sync-free gradient statistics and clipping rules; ``GradientMonitor`` and ``GradientClipping``."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.gradients.clipping import *
    from lightning_reg.gradients.core import *
    from lightning_reg.gradients.monitor import *

__getattr__, __dir__, __all__ = export(__name__, core=['core'], lightning=['monitor', 'clipping'])
