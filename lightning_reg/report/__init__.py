"""Plots of a training run from its logs (CSV or TensorBoard); ``python -m lightning_reg.report``.

The public names are listed in ``__init__.pyi`` and loaded when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
