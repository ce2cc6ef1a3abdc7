r"""Argument validators: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value.

The message names the argument, the valid values and the value received, e.g.
``\`p\` must be a number in [0, 1]; got 1.5.``. Core modules and callbacks validate with the same functions.

Example:
    >>> check_number("p", 0.5, low=0, high=1)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from torch import Tensor

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_int",
    "check_log_every_n_steps",
    "check_mode",
    "check_number",
    "check_rate",
    "check_str",
    "check_str_list",
]

_T = TypeVar("_T")


def _fmt(value: Any) -> str:
    return repr(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError``.

    Example:
        >>> check_bool("log", True)
        True
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool (True or False); got {_fmt(value)}.")
    return value


def check_str(name: str, value: Any, *, empty_ok: bool = False) -> str:
    """Return ``value`` if it is a (non-empty) str.

    Example:
        >>> check_str("monitor", "val_loss")
        'val_loss'
    """
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str; got {_fmt(value)} of type {type(value).__name__}.")
    if not value and not empty_ok:
        raise ValueError(f"`{name}` must be a non-empty str; got {_fmt(value)}.")
    return value


@overload
def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, none_ok: Literal[False] = False
) -> int: ...


@overload
def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, none_ok: bool
) -> int | None: ...


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, none_ok: bool = False
) -> int | None:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]`` (or ``None`` when allowed).

    Args:
        name: argument name for the message.
        value: the value to check.
        low: smallest valid value (inclusive), or ``None``.
        high: largest valid value (inclusive), or ``None``.
        none_ok: accept ``None``.

    Example:
        >>> check_int("patience", 3, low=0)
        3
        >>> check_int("patience", -1, low=0)
        Traceback (most recent call last):
        ...
        ValueError: `patience` must be an int >= 0; got -1.
    """
    if value is None and none_ok:
        return None
    rule = _int_rule(low, high) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be {rule}; got {_fmt(value)} of type {type(value).__name__}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be {rule}; got {_fmt(value)}.")
    return value


def _int_rule(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an int in [{low}, {high}]"
    if low is not None:
        return f"an int >= {low}"
    if high is not None:
        return f"an int <= {high}"
    return "an int"


@overload
def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    none_ok: Literal[False] = False,
) -> float: ...


@overload
def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    none_ok: bool,
) -> float | None: ...


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    none_ok: bool = False,
) -> float | None:
    """Return ``float(value)`` if it is a real number (not a bool) in the given range.

    Args:
        name: argument name for the message.
        value: the value to check.
        low: lower bound, or ``None``.
        high: upper bound, or ``None``.
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
        finite: reject NaN and infinities.
        none_ok: accept ``None`` (returned as is).

    Example:
        >>> check_number("max_rate", 0.25, low=0, high=1, high_open=True)
        0.25
        >>> check_number("max_rate", 1.0, low=0, high=1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: `max_rate` must be a number in [0, 1); got 1.0.
    """
    if value is None and none_ok:
        return None
    rule = _number_rule(low, high, low_open, high_open, finite) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            raise TypeError(f"`{name}` must be {rule} (a Python number, not a tensor); got {_fmt(value)}.")
        raise TypeError(f"`{name}` must be {rule}; got {_fmt(value)} of type {type(value).__name__}.")
    x = float(value)
    bad = (math.isnan(x) or (finite and math.isinf(x))) or (
        (low is not None and (x < low or (low_open and x == low)))
        or (high is not None and (x > high or (high_open and x == high)))
    )
    if bad:
        raise ValueError(f"`{name}` must be {rule}; got {_fmt(value)}.")
    return x


def _number_rule(low: Any, high: Any, low_open: bool, high_open: bool, finite: bool) -> str:
    what = "a finite number" if finite and low is None and high is None else "a number"

    def g(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    if low is not None and high is not None:
        return f"{what} in {'(' if low_open else '['}{g(low)}, {g(high)}{')' if high_open else ']'}"
    if low is not None:
        if not finite:
            return f"a number {'>' if low_open else '>='} {g(low)} (inf allowed)"
        return f"a finite number {'>' if low_open else '>='} {g(low)}"
    if high is not None:
        return f"{'a finite number' if finite else what} {'<' if high_open else '<='} {g(high)}"
    return what


def check_choice(name: str, value: Any, choices: Iterable[_T]) -> _T:
    """Return ``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("mode", "max", ("min", "max"))
        'max'
        >>> check_choice("mode", "up", ("min", "max"))
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be one of 'min', 'max'; got 'up'.
    """
    valid = tuple(choices)
    if not any(value == c and type(value) is type(c) for c in valid):
        listed = ", ".join(repr(c) for c in valid)
        raise ValueError(f"`{name}` must be one of {listed}; got {_fmt(value)}.")
    return value


def check_mode(mode: str | None, key: str, value: str, why: str = "") -> str:
    """Return the direction of a metric: ``mode`` checked, or ``"min"`` for ``val_loss``; else refuse.

    An accuracy minimised by a ``"min"`` default would pick its worst epoch, so only the loss may go
    without a mode.

    Args:
        mode: ``"min"``, ``"max"`` or ``None``.
        key: the argument that named the metric, for the message (``"monitor"``, ``"metric"``).
        value: the metric.
        why: a clause added to the message, e.g. what the metric decides.

    Example:
        >>> check_mode(None, "monitor", "val_loss"), check_mode("max", "metric", "val_acc")
        ('min', 'max')
        >>> check_mode(None, "metric", "val_acc")
        Traceback (most recent call last):
        ...
        ValueError: `mode` is required with metric='val_acc': 'min' if lower is better (a loss), 'max' if ...
    """
    if mode is None:
        if value != "val_loss":
            raise ValueError(
                f"`mode` is required with {key}={value!r}: 'min' if lower is better (a loss), 'max' if "
                f"higher is better (an accuracy){why}."
            )
        return "min"
    return check_choice("mode", mode, ("min", "max"))


@overload
def check_callable(
    name: str, value: Any, what: str = "a callable", *, none_ok: Literal[False] = False
) -> Callable[..., Any]: ...


@overload
def check_callable(
    name: str, value: Any, what: str = "a callable", *, none_ok: bool
) -> Callable[..., Any] | None: ...


def check_callable(
    name: str, value: Any, what: str = "a callable", *, none_ok: bool = False
) -> Callable[..., Any] | None:
    """Return ``value`` if it is callable (or ``None`` when allowed), else raise ``TypeError``.

    Example:
        >>> check_callable("optimizer", print) is print
        True
    """
    if value is None and none_ok:
        return None
    if not callable(value):
        raise TypeError(f"`{name}` must be {what}{' or None' if none_ok else ''}; got {_fmt(value)}.")
    return value


@overload
def check_rate(name: str, value: Any, *, none_ok: Literal[False] = False) -> float: ...


@overload
def check_rate(name: str, value: Any, *, none_ok: bool) -> float | None: ...


def check_rate(name: str, value: Any, *, none_ok: bool = False) -> float | None:
    """Check a drop or dropout rate: a number in ``[0, 1)``.

    Example:
        >>> check_rate("max_rate", 0.1)
        0.1
    """
    return check_number(name, value, low=0.0, high=1.0, high_open=True, none_ok=none_ok)


def check_str_list(name: str, value: Any, *, none_ok: bool = False) -> list[str] | None:
    """Check a list (or tuple) of str; a single str is refused (it would be read as characters).

    Example:
        >>> check_str_list("exclude", ["*.bias"])
        ['*.bias']
    """
    if value is None and none_ok:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a list of str{' or None' if none_ok else ''}; got {_fmt(value)}"
            + (f" (write [{value!r}])." if isinstance(value, str) else ".")
        )
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"`{name}` must be a list of str; it holds {_fmt(item)}.")
    return list(value)


def check_log_every_n_steps(value: Any) -> int | None:
    """``log_every_n_steps`` of a callback: ``None`` (the Trainer's interval), ``0`` (off) or an int >= 1.

    Example:
        >>> check_log_every_n_steps(None), check_log_every_n_steps(0)
        (None, 0)
    """
    return check_int("log_every_n_steps", value, low=0, none_ok=True)
