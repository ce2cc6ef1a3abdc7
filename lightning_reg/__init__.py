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
from lightning_reg.param_groups import (  # noqa: E402  # isort: skip
    describe_param_groups,
    no_weight_decay_names,
    validate_param_groups,
    weight_decay_param_groups,
)

__all__ += [
    "weight_decay_param_groups",
    "no_weight_decay_names",
    "describe_param_groups",
    "validate_param_groups",
]
from lightning_reg.lr_schedulers import WarmupCosineLR  # noqa: E402  # isort: skip
from lightning_reg.module import RegularizedModule  # noqa: E402  # isort: skip

__all__ += ["RegularizedModule", "WarmupCosineLR"]

# --- early stopping with best-weights restore (issue 3) ---

# --- gradient monitoring and clipping (issue 4) ---

# --- stochastic depth (issue 5) ---

# --- overfitting monitor (issue 6) ---

# --- reports and plots (issue 7) ---

# --- penalties, batch mixing, frozen BatchNorm (issue 9) ---
