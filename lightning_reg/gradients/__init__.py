"""Fused, sync-free gradient statistics and clipping rules; ``GradientMonitor`` and ``GradientClipping``."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.gradients.clip_rules import *
    from lightning_reg.gradients.clipping import *
    from lightning_reg.gradients.core import *
    from lightning_reg.gradients.monitor import *
    from lightning_reg.gradients.shared_gradients import *

__getattr__, __dir__, __all__ = export(
    __name__, core=["core", "clip_rules"], lightning=["shared_gradients", "monitor", "clipping"]
)
