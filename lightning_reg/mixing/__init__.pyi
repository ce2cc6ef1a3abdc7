"""Public names of ``lightning_reg.mixing``: read by lazy_loader, editors and type checkers."""

from .core import BatchMixer as BatchMixer
from .core import cutmix as cutmix
from .core import mixup as mixup
from .core import soft_target_cross_entropy as soft_target_cross_entropy
from .mixin import BatchMixingMixin as BatchMixingMixin

__all__ = [
    "BatchMixer",
    "BatchMixingMixin",
    "cutmix",
    "mixup",
    "soft_target_cross_entropy",
]
