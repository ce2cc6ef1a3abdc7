"""lightning-reg: regularization for PyTorch Lightning as one-line additions.

Every technique is a package with a pure-PyTorch core (usable without Lightning) and a thin Lightning
callback or mixin on top. The callbacks, the mixin and the core functions users call most are also
available flat, ``from lightning_reg import X``; ``__init__.pyi`` lists them, and each is imported only when
first used, so importing a core module never imports Lightning.

Example:
    >>> import lightning_reg
    >>> "EarlyStopping" in dir(lightning_reg) and isinstance(lightning_reg.__version__, str)
    True
"""

from importlib.metadata import PackageNotFoundError, version

import lazy_loader

__getattr__, _dir, _names = lazy_loader.attach_stub(__name__, __file__)

try:
    __version__ = version("lightning-reg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [*_names, "__version__"]


def __dir__() -> list[str]:
    return list(__all__)
