"""Weight-decay parameter groups, layer-wise LR decay, LR schedules and the ``RegularizedModule`` mixin."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.weight_decay.groups import *
    from lightning_reg.weight_decay.module import *
    from lightning_reg.weight_decay.schedulers import *

__getattr__, __dir__, __all__ = export(__name__, core=['groups', 'schedulers'], lightning=['module'])
