"""The flat public API, ``from lightning_reg import X``: read by lazy_loader, editors and type checkers."""

from .batchnorm import FreezeBatchNorm as FreezeBatchNorm
from .batchnorm import freeze_batchnorm as freeze_batchnorm
from .early_stopping import EarlyStopping as EarlyStopping
from .gradients import GradientClipping as GradientClipping
from .gradients import GradientMonitor as GradientMonitor
from .gradients import grad_norms as grad_norms
from .mixing import BatchMixer as BatchMixer
from .mixing import BatchMixingMixin as BatchMixingMixin
from .mixing import cutmix as cutmix
from .mixing import mixup as mixup
from .module import RegularizedModule as RegularizedModule
from .overfitting import OverfittingMonitor as OverfittingMonitor
from .penalties import PenaltyMixin as PenaltyMixin
from .penalties import ProximalL1 as ProximalL1
from .presets import get_preset as get_preset
from .presets import preset_callbacks as preset_callbacks
from .report import render_report as render_report
from .reproducibility import ReproducibleResume as ReproducibleResume
from .stochastic_depth import DropPath as DropPath
from .stochastic_depth import StochasticDepthScheduler as StochasticDepthScheduler
from .stochastic_depth import add_stochastic_depth as add_stochastic_depth
from .stochastic_depth import drop_path as drop_path
from .weight_decay import DecayRule as DecayRule
from .weight_decay import WarmupCosineLR as WarmupCosineLR
from .weight_decay import weight_decay_param_groups as weight_decay_param_groups

__version__: str

__all__ = [
    "BatchMixer",
    "BatchMixingMixin",
    "DecayRule",
    "DropPath",
    "EarlyStopping",
    "FreezeBatchNorm",
    "GradientClipping",
    "GradientMonitor",
    "OverfittingMonitor",
    "PenaltyMixin",
    "ProximalL1",
    "RegularizedModule",
    "ReproducibleResume",
    "StochasticDepthScheduler",
    "WarmupCosineLR",
    "__version__",
    "add_stochastic_depth",
    "cutmix",
    "drop_path",
    "freeze_batchnorm",
    "get_preset",
    "grad_norms",
    "mixup",
    "preset_callbacks",
    "render_report",
    "weight_decay_param_groups",
]
