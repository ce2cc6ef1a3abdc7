"""Public names of ``lightning_reg.penalties``: read by lazy_loader, editors and type checkers."""

from .callback import ProximalL1 as ProximalL1
from .functional import WeightPenalty as WeightPenalty
from .functional import elastic_net_penalty as elastic_net_penalty
from .functional import l1_penalty as l1_penalty
from .functional import l2_penalty as l2_penalty
from .functional import proximal_l1_ as proximal_l1_
from .mixin import PenaltyMixin as PenaltyMixin

__all__ = [
    "PenaltyMixin",
    "ProximalL1",
    "WeightPenalty",
    "elastic_net_penalty",
    "l1_penalty",
    "l2_penalty",
    "proximal_l1_",
]
