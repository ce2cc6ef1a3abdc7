"""Exact resume: every rank's random-number states saved in checkpoints and restored at the right point."""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.reproducibility.callback import *
    from lightning_reg.reproducibility.rng import *

__getattr__, __dir__, __all__ = export(__name__, core=["rng"], lightning=["callback"])
