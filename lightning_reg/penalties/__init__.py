"""Explicit L1 / L2 / elastic-net penalties and proximal L1 on the decayed parameters."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.penalties.callback import *
    from lightning_reg.penalties.core import *
    from lightning_reg.penalties.mixin import *

__getattr__, __dir__, __all__ = export(__name__, core=['core'], lightning=['mixin', 'callback'])
