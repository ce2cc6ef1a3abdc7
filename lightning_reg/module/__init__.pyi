"""Public names of ``lightning_reg.module``: read by lazy_loader, editors and type checkers."""

from .config import RegularizationConfig as RegularizationConfig
from .regularized import RegularizedModule as RegularizedModule

__all__ = [
    "RegularizationConfig",
    "RegularizedModule",
]
