"""Explicit L1 / L2 / elastic-net penalties and proximal L1 on the decayed parameters.

The public names are listed in ``__init__.pyi`` and loaded when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
