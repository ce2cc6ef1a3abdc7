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
from lightning_reg.callbacks.early_stopping import EarlyStopping  # noqa: E402 # isort: skip

__all__ += ["EarlyStopping"]

# --- gradient monitoring and clipping (issue 4) ---

# --- stochastic depth (issue 5) ---

# --- overfitting monitor (issue 6) ---

# --- reports and plots (issue 7) ---

# --- penalties, batch mixing, frozen BatchNorm (issue 9) ---
