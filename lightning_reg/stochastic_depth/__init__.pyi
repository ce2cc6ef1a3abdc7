"""Public names of ``lightning_reg.stochastic_depth``: read by lazy_loader, editors and type checkers."""

from .callback import StochasticDepthScheduler as StochasticDepthScheduler
from .layers import DropPath as DropPath
from .layers import add_stochastic_depth as add_stochastic_depth
from .layers import drop_path as drop_path
from .rate_rules import DEPTH_RULES as DEPTH_RULES
from .rate_rules import TIME_SCHEDULES as TIME_SCHEDULES
from .rate_rules import depth_rates as depth_rates
from .rate_rules import linear_depth_rates as linear_depth_rates

__all__ = [
    "DEPTH_RULES",
    "DropPath",
    "StochasticDepthScheduler",
    "TIME_SCHEDULES",
    "add_stochastic_depth",
    "depth_rates",
    "drop_path",
    "linear_depth_rates",
]
