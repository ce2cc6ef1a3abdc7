"""Stochastic depth: ``DropPath``, model surgery, depth rules, time schedules and their scheduler."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.stochastic_depth.callback import *
    from lightning_reg.stochastic_depth.layers import *
    from lightning_reg.stochastic_depth.rate_rules import *
    from lightning_reg.stochastic_depth.rate_tensor import *

__getattr__, __dir__, __all__ = export(
    __name__, core=["layers", "rate_rules", "rate_tensor"], lightning=["callback"]
)
