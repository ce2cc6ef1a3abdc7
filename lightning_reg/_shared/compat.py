"""What differs between the supported torch / Lightning releases, decided once at import.

The supported range and the API that sets each floor are listed in ``docs/versions.md``; each name here
papers over one difference between the floor and the newest releases, so the rest of the package is
written once, against the newest API.

The torch names are resolved at import; the Lightning names (``EarlyStoppingReason`` and the two
``LIGHTNING_*`` flags) on first use, so a core module importing this one for ``DTensor`` does not import
Lightning.
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
from packaging.version import Version

__all__ = [
    "LIGHTNING_EXACT_MID_EPOCH_RESUME",
    "LIGHTNING_TRACKS_STOPPING_REASON",
    "DTensor",
    "EarlyStoppingReason",
    "fully_shard",
    "infer_stopping_reason",
]


try:  # DTensor (FSDP2 ``fully_shard`` parameters, tensor parallel) is public from torch 2.5
    from torch.distributed.tensor import DTensor
except ImportError:
    try:  # torch 2.4
        from torch.distributed._tensor import DTensor  # type: ignore[no-redef]
    except ImportError:  # torch built without distributed support: no parameter is a DTensor
        DTensor = None  # type: ignore[assignment,misc]

try:  # FSDP2 is public as ``torch.distributed.fsdp.fully_shard`` from torch 2.6
    from torch.distributed.fsdp import fully_shard
except ImportError:
    try:  # torch 2.4 / 2.5 (what Lightning's ModelParallelStrategy uses there)
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    except ImportError:  # torch built without distributed support
        fully_shard = None  # type: ignore[assignment]


class _EarlyStoppingReason(Enum):
    """Why ``EarlyStopping`` stopped a run: Lightning 2.6's enum (same names, same values)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


@functools.cache
def _lightning_names() -> dict[str, Any]:
    try:
        from lightning import __version__ as lightning_version
    except ImportError:  # Lightning absent (a core module's user): the names keep their oldest meaning
        lightning_version = "0"
    # Lightning 2.5 reworked how its loops restart from a checkpoint saved in the middle of an epoch; 2.4
    # continues such a checkpoint at another point of the epoch, so no resumed run can be bitwise exact
    exact_mid_epoch = Version(lightning_version) >= Version("2.5")
    try:  # Lightning >= 2.6 names the reason a run stopped
        from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason as reason
    except ImportError:  # Lightning 2.4 / 2.5, or Lightning absent
        reason, tracks = _EarlyStoppingReason, False
    else:
        tracks = True
    return {
        "EarlyStoppingReason": reason,
        "LIGHTNING_TRACKS_STOPPING_REASON": tracks,
        "LIGHTNING_EXACT_MID_EPOCH_RESUME": exact_mid_epoch,
    }


if TYPE_CHECKING:
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    #: Whether Lightning's ``EarlyStopping`` sets and saves ``stopping_reason`` itself (Lightning >= 2.6).
    LIGHTNING_TRACKS_STOPPING_REASON: bool
    #: Whether Lightning resumes a mid-epoch checkpoint exactly where it was saved (Lightning >= 2.5).
    LIGHTNING_EXACT_MID_EPOCH_RESUME: bool


_LIGHTNING_NAMES = (
    "EarlyStoppingReason",
    "LIGHTNING_TRACKS_STOPPING_REASON",
    "LIGHTNING_EXACT_MID_EPOCH_RESUME",
)


def __getattr__(name: str) -> Any:
    # The Lightning names are looked up on first use, so the core modules that import this module for
    # the torch names (``DTensor``) do not import Lightning.
    if name in _LIGHTNING_NAMES:
        return _lightning_names()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def infer_stopping_reason(callback: Any, current: Any) -> EarlyStoppingReason:
    """Return why Lightning's ``EarlyStopping`` stopped at a check, for releases that do not record it.

    Call it only after ``_evaluate_stopping_criteria`` returned ``should_stop=True``. It tests the stop
    conditions in Lightning's order (non-finite, stopping threshold, divergence threshold, patience); none
    of them depends on the state that evaluation changed, so the answer is the branch Lightning took.

    Args:
        callback: a Lightning ``EarlyStopping`` (``check_finite``, the thresholds and ``monitor_op``).
        current: the monitored value of the check, a 0-d tensor.

    Returns:
        The matching ``EarlyStoppingReason``.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> es = SimpleNamespace(check_finite=True, stopping_threshold=0.5, divergence_threshold=None,
        ...                      monitor_op=torch.lt)
        >>> infer_stopping_reason(es, torch.tensor(0.1)).name
        'STOPPING_THRESHOLD'
        >>> infer_stopping_reason(es, torch.tensor(float("nan"))).name
        'NON_FINITE_METRIC'
    """
    reason = _lightning_names()["EarlyStoppingReason"]
    if callback.check_finite and not bool(torch.isfinite(current)):
        return reason.NON_FINITE_METRIC
    threshold = callback.stopping_threshold
    if threshold is not None and bool(callback.monitor_op(current, threshold)):
        return reason.STOPPING_THRESHOLD
    if callback.divergence_threshold is not None and bool(
        callback.monitor_op(-current, -callback.divergence_threshold)
    ):
        return reason.DIVERGENCE_THRESHOLD
    return reason.PATIENCE_EXHAUSTED
