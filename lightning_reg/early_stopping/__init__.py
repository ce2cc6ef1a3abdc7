"""Early stopping with best-weights restore: rank-local weight snapshots and the callback."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.early_stopping.callback import *
    from lightning_reg.early_stopping.snapshot import *

__getattr__, __dir__, __all__ = export(__name__, core=['snapshot'], lightning=['callback'])
