"""Public names of ``lightning_reg.batchnorm``: read by lazy_loader, editors and type checkers."""

from .callback import FreezeBatchNorm as FreezeBatchNorm
from .functional import freeze_batchnorm as freeze_batchnorm
from .functional import is_frozen_batchnorm as is_frozen_batchnorm
from .functional import unfreeze_batchnorm as unfreeze_batchnorm

__all__ = [
    "FreezeBatchNorm",
    "freeze_batchnorm",
    "is_frozen_batchnorm",
    "unfreeze_batchnorm",
]
