"""Public names of ``lightning_reg.presets``: read by lazy_loader, editors and type checkers."""

from .callbacks import PresetEarlyStopping as PresetEarlyStopping
from .callbacks import PresetStochasticDepth as PresetStochasticDepth
from .callbacks import PresetSummary as PresetSummary
from .callbacks import preset_callbacks as preset_callbacks
from .callbacks import preset_config as preset_config
from .registry import PRESET_NAMES as PRESET_NAMES
from .registry import Preset as Preset
from .registry import describe_preset as describe_preset
from .registry import get_preset as get_preset

__all__ = [
    "PRESET_NAMES",
    "Preset",
    "PresetEarlyStopping",
    "PresetStochasticDepth",
    "PresetSummary",
    "describe_preset",
    "get_preset",
    "preset_callbacks",
    "preset_config",
]
