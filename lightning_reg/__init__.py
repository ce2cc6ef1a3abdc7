"""lightning-reg: regularization for PyTorch Lightning as one-line additions.

Every technique is a package with a pure-PyTorch core (usable without Lightning) and a thin Lightning
callback or mixin on top. Every public name is also available flat, ``from lightning_reg import X``,
and is imported only when first used, so importing a core module never imports Lightning.

Example:
    >>> import lightning_reg
    >>> "EarlyStopping" in lightning_reg.__all__ and isinstance(lightning_reg.__version__, str)
    True
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lightning_reg._lazy import export_packages

if TYPE_CHECKING:  # the same names, loaded lazily at run time
    from lightning_reg.batchnorm import *
    from lightning_reg.early_stopping import *
    from lightning_reg.gradients import *
    from lightning_reg.mixing import *
    from lightning_reg.module import *
    from lightning_reg.overfitting import *
    from lightning_reg.penalties import *
    from lightning_reg.presets import *
    from lightning_reg.report import *
    from lightning_reg.reproducibility import *
    from lightning_reg.stochastic_depth import *
    from lightning_reg.weight_decay import *

try:
    __version__ = version("lightning-reg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

#: The packages whose public names are exported flat, in the order the documentation presents them.
PACKAGES = (
    "weight_decay",
    "module",
    "early_stopping",
    "gradients",
    "stochastic_depth",
    "overfitting",
    "penalties",
    "mixing",
    "batchnorm",
    "reproducibility",
    "report",
    "presets",
)

__getattr__, __dir__, _names = export_packages(__name__, PACKAGES)
__all__ = ["__version__", *_names]
del _names
