"""Verbosity: ``0`` (or ``False``) prints nothing but warnings, ``1`` one line at fit start, ``2`` details."""

from __future__ import annotations

from typing import Any

from lightning_reg._shared.validation import check_int

__all__ = ["check_verbose", "say"]


def check_verbose(value: Any) -> int:
    """Normalise ``verbose``: ``False``/``0`` quiet, ``1`` one line at fit start, ``True``/``2`` details.

    Example:
        >>> check_verbose(True), check_verbose(False), check_verbose(1)
        (2, 0, 1)
    """
    if isinstance(value, bool):
        return 2 if value else 0
    return int(check_int("verbose", value, low=0, high=2))


def say(verbose: int, level: int, message: str) -> None:
    """Print ``message`` on rank zero (Lightning's ``rank_zero_info``) when ``verbose >= level``.

    Args:
        verbose: the callback's normalised verbosity (``check_verbose``).
        level: 1 for the one line at fit start, 2 for details.
        message: the text.
    """
    if verbose >= level:
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        rank_zero_info(message)
