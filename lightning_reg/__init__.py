"""lightning-reg: regularization for PyTorch Lightning as one-line additions.

Every technique lives twice: a pure-PyTorch function or module (usable without Lightning) and a thin
Lightning callback or mixin on top. Everything public is re-exported here, flat.

Example:
    >>> import lightning_reg
    >>> isinstance(lightning_reg.__version__, str)
    True
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lightning-reg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__: list[str] = ["__version__"]

# --- parameter groups and the RegularizedModule mixin (issue 2) ---

# --- early stopping with best-weights restore (issue 3) ---

# --- gradient monitoring and clipping (issue 4) ---

# --- stochastic depth (issue 5) ---

# --- overfitting monitor (issue 6) ---
from lightning_reg.callbacks.overfitting_monitor import OverfittingMonitor  # noqa: E402
from lightning_reg.overfitting import (  # noqa: E402
    CheckReport,
    OverfittingCriteria,
    generalization_loss,
    overfitting_gap,
    progress_quotient,
    relative_gap,
    training_progress,
)

__all__ += [
    "CheckReport",
    "OverfittingCriteria",
    "OverfittingMonitor",
    "generalization_loss",
    "overfitting_gap",
    "progress_quotient",
    "relative_gap",
    "training_progress",
]

# --- reports and plots (issue 7) ---

# --- penalties, batch mixing, frozen BatchNorm (issue 9) ---
