"""Named regularization presets (``mild``, ``medium``, ``strong``): the module side and the callbacks."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.presets.callbacks import *
    from lightning_reg.presets.core import *
    from lightning_reg.presets.module_side import *

__getattr__, __dir__, __all__ = export(__name__, core=["core", "module_side"], lightning=["callbacks"])
