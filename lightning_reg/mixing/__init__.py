"""Batch mixing on the device: Mixup, CutMix, label smoothing; ``BatchMixer`` and its module mixin."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.mixing.core import *
    from lightning_reg.mixing.mixin import *

__getattr__, __dir__, __all__ = export(__name__, core=['core'], lightning=['mixin'])
