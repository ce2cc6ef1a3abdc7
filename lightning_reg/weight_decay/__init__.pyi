"""Public names of ``lightning_reg.weight_decay``: read by lazy_loader, editors and type checkers."""

from .groups import DecayRule as DecayRule
from .groups import block_layer_ids as block_layer_ids
from .groups import classify_parameters as classify_parameters
from .groups import describe_param_groups as describe_param_groups
from .groups import is_norm_module as is_norm_module
from .groups import no_weight_decay_names as no_weight_decay_names
from .groups import validate_param_groups as validate_param_groups
from .groups import weight_decay_param_groups as weight_decay_param_groups
from .schedulers import WarmupCosineLR as WarmupCosineLR

__all__ = [
    "DecayRule",
    "WarmupCosineLR",
    "block_layer_ids",
    "classify_parameters",
    "describe_param_groups",
    "is_norm_module",
    "no_weight_decay_names",
    "validate_param_groups",
    "weight_decay_param_groups",
]
