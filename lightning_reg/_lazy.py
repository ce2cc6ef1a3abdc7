"""Lazy, flat public API (PEP 562): names are read from each module's ``__all__`` without importing it.

Every technique package declares which of its modules are the pure-PyTorch core (importable without
Lightning) and which are the Lightning shell (callbacks, mixins). :func:`export` builds the package's
``__all__`` from those modules' own ``__all__`` lists, parsed from source, and returns a module
``__getattr__`` that imports a module only when one of its names is first used. So ``import
lightning_reg.gradients.core`` never imports Lightning, and ``from lightning_reg import EarlyStopping``
imports only what ``EarlyStopping`` needs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__: list[str] = []

#: package -> (core modules, Lightning modules), as declared by each package's ``export`` call.
DECLARED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def module_all(module_name: str) -> list[str]:
    """Return the literal ``__all__`` of a module, read from its source without importing it.

    Args:
        module_name: dotted name of a module of this package.

    Returns:
        The names listed in its ``__all__``.

    Raises:
        ValueError: if the module has no literal ``__all__`` list.

    Example:
        >>> module_all("lightning_reg.stochastic_depth.rate_rules")[:2]
        ['DEPTH_RULES', 'TIME_SCHEDULES']
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"module {module_name!r} not found")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "__all__" and node.value is not None:  # type: ignore[union-attr]
            return [str(n) for n in ast.literal_eval(node.value)]  # type: ignore[union-attr]
    raise ValueError(f"module {module_name!r} has no literal __all__")


def export(
    package: str, core: Sequence[str], lightning: Sequence[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Make a technique package export its modules' names lazily.

    Args:
        package: the package's ``__name__``.
        core: modules (relative names) that must import without Lightning.
        lightning: modules that build on Lightning (callbacks, mixins).

    Returns:
        ``(__getattr__, __dir__, __all__)`` for the package.

    Example:
        >>> getattr_, dir_, names = export("lightning_reg.stochastic_depth", ["rate_rules"])
        >>> "linear_depth_rates" in names
        True
    """
    DECLARED[package] = (tuple(core), tuple(lightning))
    where: dict[str, str] = {}
    for module in [*core, *lightning]:
        for name in module_all(f"{package}.{module}"):
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by both {where[name]!r} and {module!r}")
            where[name] = module
    return _make_getattr(package, where)


def export_packages(
    package: str, subpackages: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Flat API of the top-level package: every name of every technique package, loaded lazily.

    Args:
        package: the top-level package's ``__name__``.
        subpackages: technique packages whose ``__all__`` is re-exported.

    Returns:
        ``(__getattr__, __dir__, __all__)``.
    """
    where: dict[str, str] = {}
    for sub in subpackages:
        names = importlib.import_module(f"{package}.{sub}").__all__
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by both {where[name]!r} and {sub!r}")
            where[name] = sub
    return _make_getattr(package, where)


def _make_getattr(
    package: str, where: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        importlib.import_module(package).__dict__[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(where))

    return __getattr__, __dir__, list(where)
