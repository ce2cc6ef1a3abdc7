"""What an optimizer callable was configured with (package-internal: used by ``RegularizationConfig``).

A module's ``lr`` and ``weight_decay`` go into every parameter group, so the same setting bound to the
optimizer callable would be silently overridden; ``RegularizationConfig.resolve`` refuses such a conflict.
It needs two facts read here:

* the arguments a ``functools.partial`` binds to values other than the class's defaults. LightningCLI
  (jsonargparse) hands an ``OptimizerCallable`` over as a partial holding *every* argument of the class,
  defaults included; only the values that differ from the defaults were configured;
* the optimizer class a module's ``__init__`` takes by default, and that class's defaults. LightningCLI
  keeps the ``init_args`` the new class also accepts when a config changes ``class_path``, so
  ``SGD(weight_decay=0.01)`` after switching from AdamW most likely carries AdamW's default over.

Pure PyTorch and ``inspect``: nothing here imports Lightning.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch.optim import Optimizer

__all__ = ["bound_optimizer_arguments", "default_optimizer_defaults"]


def _class_defaults(cls: type) -> dict[str, Any]:
    try:
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    except (TypeError, ValueError):  # pragma: no cover - builtin signatures
        return {}


def bound_optimizer_arguments(optimizer: Any) -> tuple[str, dict[str, Any]]:
    """Return the optimizer's class name and the arguments a ``functools.partial`` binds to non-defaults.

    Args:
        optimizer: an optimizer class, a ``functools.partial`` of one, or any callable.

    Returns:
        ``(class name, {argument: value})``; no arguments for anything but a partial.

    Example:
        >>> import torch
        >>> bound_optimizer_arguments(functools.partial(torch.optim.SGD, lr=0.1, momentum=0))
        ('SGD', {'lr': 0.1})
        >>> bound_optimizer_arguments(torch.optim.AdamW)
        ('AdamW', {})
    """
    if not isinstance(optimizer, functools.partial):
        return getattr(optimizer, "__name__", type(optimizer).__name__), {}
    cls = next(
        (a for a in (optimizer.func, *optimizer.args) if isinstance(a, type) and issubclass(a, Optimizer)),
        None,
    )
    if cls is None:
        return "optimizer", {}
    defaults = _class_defaults(cls)
    bound = {k: v for k, v in optimizer.keywords.items() if k in defaults and v != defaults[k]}
    return cls.__name__, bound


def default_optimizer_defaults(owner: type) -> tuple[str | None, dict[str, Any]]:
    """Return the class of a module's default ``optimizer`` argument and that class's defaults.

    The first ``__init__`` in the module's MRO that takes ``optimizer`` decides; ``(None, {})`` when its
    default is not an optimizer class (or a partial of one).

    Args:
        owner: the module's class.

    Returns:
        ``(class name or None, {argument: default})``.

    Example:
        >>> import torch
        >>> class Net:
        ...     def __init__(self, optimizer=torch.optim.AdamW): ...
        >>> name, defaults = default_optimizer_defaults(Net)
        >>> name, defaults["weight_decay"]
        ('AdamW', 0.01)
    """
    for klass in owner.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            param = inspect.signature(init).parameters.get("optimizer")
        except (TypeError, ValueError):  # pragma: no cover
            continue
        if param is None:
            continue
        default = param.default
        if isinstance(default, functools.partial):
            default = default.func
        if isinstance(default, type) and issubclass(default, Optimizer):
            return default.__name__, _class_defaults(default)
        return None, {}
    return None, {}
