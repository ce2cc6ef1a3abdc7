"""Public names of ``lightning_reg.reproducibility``: read by lazy_loader, editors and type checkers."""

from .callback import ReproducibleResume as ReproducibleResume
from .rng import capture_rng_states as capture_rng_states
from .rng import restore_rng_states as restore_rng_states

__all__ = [
    "ReproducibleResume",
    "capture_rng_states",
    "restore_rng_states",
]
