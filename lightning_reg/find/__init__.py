"""The regularization finder: an Optuna search over the presets and the components' strengths, on a budget.

An optional extra: ``pip install "lightning-reg[find]"`` (Optuna and optuna-integration);
``python -m lightning_reg.find --config my.yaml`` runs it on a LightningCLI config.
"""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.find.budget import *
    from lightning_reg.find.cli import *
    from lightning_reg.find.compare import *
    from lightning_reg.find.objective import *
    from lightning_reg.find.output import *
    from lightning_reg.find.result import *
    from lightning_reg.find.search import *
    from lightning_reg.find.space import *
    from lightning_reg.find.stats import *
    from lightning_reg.find.study import *

__getattr__, __dir__, __all__ = export(
    __name__,
    core=["space", "stats", "budget", "result", "study"],
    lightning=["objective", "compare", "search", "output", "cli"],
)
