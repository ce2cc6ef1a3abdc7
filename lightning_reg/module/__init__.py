"""``RegularizedModule``: the LightningModule mixin that composes the techniques' module sides.

Its settings are one frozen ``RegularizationConfig`` (preset < module argument < explicit component),
validated once when the module is built.
"""

from typing import TYPE_CHECKING

from lightning_reg._lazy import export

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.module.config import *
    from lightning_reg.module.regularized import *

__getattr__, __dir__, __all__ = export(__name__, core=[], lightning=['config', 'regularized'])
