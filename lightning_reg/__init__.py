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
from lightning_reg.callbacks.early_stopping import EarlyStopping  # noqa: E402 # isort: skip

__all__ += ["EarlyStopping"]

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
from lightning_reg.callbacks.stochastic_depth import StochasticDepthScheduler  # noqa: E402
from lightning_reg.layers import (  # noqa: E402
    DropPath,
    add_stochastic_depth,
    attach_drop_path,
    drop_path,
    find_drop_rate_modules,
)
from lightning_reg.schedules import (  # noqa: E402
    depth_rates,
    early_schedule,
    huang_depth_rates,
    late_schedule,
    linear_depth_rates,
    make_time_schedule,
    uniform_depth_rates,
    warmup_schedule,
)

__all__ += [
    "DropPath",
    "StochasticDepthScheduler",
    "add_stochastic_depth",
    "attach_drop_path",
    "depth_rates",
    "drop_path",
    "early_schedule",
    "find_drop_rate_modules",
    "huang_depth_rates",
    "late_schedule",
    "linear_depth_rates",
    "make_time_schedule",
    "uniform_depth_rates",
    "warmup_schedule",
]

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
from lightning_reg.report import (  # noqa: E402  # isort: skip
    MissingMetricsError,
    ReportKeys,
    best_epoch_of,
    load_metrics,
    plot_drop_path,
    plot_grad_norms,
    plot_train_val,
    render_report,
)

__all__ += [
    "MissingMetricsError",
    "ReportKeys",
    "best_epoch_of",
    "load_metrics",
    "plot_drop_path",
    "plot_grad_norms",
    "plot_train_val",
    "render_report",
]

# --- penalties, batch mixing, frozen BatchNorm (issue 9) ---
from lightning_reg.batchnorm import (  # noqa: E402  # isort: skip
    batchnorm_layers,
    freeze_batchnorm,
    frozen_batchnorm_parameters,
    is_frozen_batchnorm,
    unfreeze_batchnorm,
)
from lightning_reg.callbacks.freeze_batchnorm import FreezeBatchNorm  # noqa: E402  # isort: skip
from lightning_reg.callbacks.proximal_l1 import ProximalL1  # noqa: E402  # isort: skip
from lightning_reg.mixing import (  # noqa: E402  # isort: skip
    BatchMixer,
    BatchMixingMixin,
    MixParams,
    cutmix,
    cutmix_box,
    mixup,
    soft_target_cross_entropy,
    soft_targets,
)
from lightning_reg.penalties import (  # noqa: E402  # isort: skip
    PenaltyMixin,
    WeightPenalty,
    add_penalty_grad_,
    decayed_parameters,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    proximal_l1_,
    soft_threshold_,
    zero_fraction,
)

__all__ += [
    "batchnorm_layers",
    "freeze_batchnorm",
    "frozen_batchnorm_parameters",
    "is_frozen_batchnorm",
    "unfreeze_batchnorm",
    "FreezeBatchNorm",
    "ProximalL1",
    "BatchMixer",
    "BatchMixingMixin",
    "MixParams",
    "cutmix",
    "cutmix_box",
    "mixup",
    "soft_target_cross_entropy",
    "soft_targets",
    "PenaltyMixin",
    "WeightPenalty",
    "add_penalty_grad_",
    "decayed_parameters",
    "elastic_net_penalty",
    "l1_penalty",
    "l2_penalty",
    "proximal_l1_",
    "soft_threshold_",
    "zero_fraction",
]
