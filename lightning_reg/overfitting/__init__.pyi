"""Public names of ``lightning_reg.overfitting``: read by lazy_loader, editors and type checkers."""

from .callback import OverfittingMonitor as OverfittingMonitor
from .criteria import OverfittingCriteria as OverfittingCriteria
from .criteria import generalization_loss as generalization_loss
from .criteria import overfitting_gap as overfitting_gap
from .criteria import progress_quotient as progress_quotient
from .criteria import relative_gap as relative_gap
from .criteria import training_progress as training_progress

__all__ = [
    "OverfittingCriteria",
    "OverfittingMonitor",
    "generalization_loss",
    "overfitting_gap",
    "progress_quotient",
    "relative_gap",
    "training_progress",
]
