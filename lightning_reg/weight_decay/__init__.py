"""Weight-decay parameter groups (decay / no decay, layer-wise LR decay) and the LR schedules they use."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.weight_decay.groups import *
    from lightning_reg.weight_decay.schedulers import *

__getattr__, __dir__, __all__ = export(__name__, core=['groups', 'schedulers'])
