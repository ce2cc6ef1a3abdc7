"""Public names of ``lightning_reg.mixing``: read by lazy_loader, editors and type checkers."""

from .mixers import BatchMixer as BatchMixer
from .mixers import cutmix as cutmix
from .mixers import mixup as mixup
from .mixers import soft_target_cross_entropy as soft_target_cross_entropy
from .mixin import BatchMixingMixin as BatchMixingMixin

__all__ = [
    "BatchMixer",
    "BatchMixingMixin",
    "cutmix",
    "mixup",
    "soft_target_cross_entropy",
]
