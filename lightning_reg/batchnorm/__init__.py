"""BatchNorm that stays frozen through ``model.train()``, and the ``FreezeBatchNorm`` callback."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.batchnorm.callback import *
    from lightning_reg.batchnorm.core import *

__getattr__, __dir__, __all__ = export(__name__, core=['core'], lightning=['callback'])
