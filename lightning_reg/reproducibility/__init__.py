"""Exact resume: every rank's random-number states saved in checkpoints and restored at the right point.

The public names are listed in ``__init__.pyi`` and loaded when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
