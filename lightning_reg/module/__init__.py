"""``RegularizedModule``: the LightningModule mixin that composes the techniques' module sides.

Its settings are one frozen ``RegularizationConfig`` (preset < module argument < explicit component),
validated once when the module is built.

The public names are listed in ``__init__.pyi`` and loaded when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
