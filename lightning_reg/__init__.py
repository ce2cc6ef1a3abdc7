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
from lightning_reg.callbacks.gradient_clipping import GradientClipping  # noqa: E402
from lightning_reg.callbacks.gradient_monitor import GradientMonitor  # noqa: E402
from lightning_reg.gradients import (  # noqa: E402
    AutoClipState,
    GradStats,
    ParamGrouping,
    ZClipState,
    agc_clip_,
    autoclip_step,
    clip_coefficient,
    clip_grads_by_norm_,
    clip_grads_by_value_,
    grad_norms,
    group_by_module_depth,
    group_by_param_groups,
    group_by_regex,
    nonfinite_count,
    per_tensor_norms,
    reduce_norms,
    scale_grads_,
    zclip_step,
)

__all__ += [
    "GradientClipping",
    "GradientMonitor",
    "AutoClipState",
    "GradStats",
    "ParamGrouping",
    "ZClipState",
    "agc_clip_",
    "autoclip_step",
    "clip_coefficient",
    "clip_grads_by_norm_",
    "clip_grads_by_value_",
    "grad_norms",
    "group_by_module_depth",
    "group_by_param_groups",
    "group_by_regex",
    "nonfinite_count",
    "per_tensor_norms",
    "reduce_norms",
    "scale_grads_",
    "zclip_step",
]

# --- stochastic depth (issue 5) ---

# --- overfitting monitor (issue 6) ---

# --- reports and plots (issue 7) ---

# --- penalties, batch mixing, frozen BatchNorm (issue 9) ---
