"""Public names of ``lightning_reg.gradients``: read by lazy_loader, editors and type checkers."""

from .clipping import GradientClipping as GradientClipping
from .functional import GradStats as GradStats
from .functional import agc_clip_ as agc_clip_
from .functional import clip_grads_by_norm_ as clip_grads_by_norm_
from .functional import clip_grads_by_value_ as clip_grads_by_value_
from .functional import grad_norms as grad_norms
from .functional import nonfinite_count as nonfinite_count
from .functional import per_tensor_norms as per_tensor_norms
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
