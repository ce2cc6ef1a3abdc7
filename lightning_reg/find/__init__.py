"""The regularization finder: an Optuna search over the presets and the components' strengths, on a budget.

An optional extra: ``pip install "lightning-reg[find]"`` (Optuna and optuna-integration);
``python -m lightning_reg.find --config my.yaml`` runs it on a LightningCLI config.

The public names are listed in ``__init__.pyi`` and loaded when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
