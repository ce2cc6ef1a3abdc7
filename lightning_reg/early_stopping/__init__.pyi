"""Public names of ``lightning_reg.early_stopping``: read by lazy_loader, editors and type checkers."""

from .callback import EarlyStopping as EarlyStopping
from .snapshot import WeightSnapshot as WeightSnapshot

__all__ = [
    "EarlyStopping",
    "WeightSnapshot",
]
