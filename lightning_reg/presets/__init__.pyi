"""Public names of ``lightning_reg.presets``: read by lazy_loader, editors and type checkers."""

from .callbacks import PresetStochasticDepth as PresetStochasticDepth
from .callbacks import PresetSummary as PresetSummary
from .callbacks import preset_callbacks as preset_callbacks
from .callbacks import preset_config as preset_config
from .core import PRESET_NAMES as PRESET_NAMES
from .core import Preset as Preset
from .core import describe_preset as describe_preset
from .core import get_preset as get_preset

__all__ = [
    "PRESET_NAMES",
    "Preset",
    "PresetStochasticDepth",
    "PresetSummary",
    "describe_preset",
    "get_preset",
    "preset_callbacks",
    "preset_config",
]
