"""Public names of ``lightning_reg.gradients``: read by lazy_loader, editors and type checkers."""

from .clipping import GradientClipping as GradientClipping
from .core import GradStats as GradStats
from .core import agc_clip_ as agc_clip_
from .core import clip_grads_by_norm_ as clip_grads_by_norm_
from .core import clip_grads_by_value_ as clip_grads_by_value_
from .core import grad_norms as grad_norms
from .core import nonfinite_count as nonfinite_count
from .core import per_tensor_norms as per_tensor_norms
from .monitor import GradientMonitor as GradientMonitor

__all__ = [
    "GradStats",
    "GradientClipping",
    "GradientMonitor",
    "agc_clip_",
    "clip_grads_by_norm_",
    "clip_grads_by_value_",
    "grad_norms",
    "nonfinite_count",
    "per_tensor_norms",
]
