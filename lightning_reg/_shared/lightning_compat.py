"""What differs between the supported Lightning releases, decided once at import.

The supported range and the API that sets each floor are listed in ``docs/versions.md``. This is the one
module of the shared layer that imports Lightning: only the Lightning shells (callbacks) import it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import lightning
import torch
from packaging.version import Version

__all__ = [
    "LIGHTNING_EXACT_MID_EPOCH_RESUME",
    "LIGHTNING_TRACKS_STOPPING_REASON",
    "EarlyStoppingReason",
    "infer_stopping_reason",
]

#: Whether Lightning resumes a mid-epoch checkpoint exactly where it was saved (Lightning >= 2.5): 2.5
#: reworked how the loops restart; 2.4 continues such a checkpoint at another point of the epoch, so no
#: resumed run can be bitwise exact there.
LIGHTNING_EXACT_MID_EPOCH_RESUME: bool = Version(lightning.__version__) >= Version("2.5")

try:  # Lightning >= 2.6 names the reason a run stopped, and sets and saves it itself
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    #: Whether Lightning's ``EarlyStopping`` sets and saves ``stopping_reason`` itself (Lightning >= 2.6).
    LIGHTNING_TRACKS_STOPPING_REASON: bool = True
except ImportError:  # Lightning 2.4 / 2.5: the same enum (same names, same values), ours
    LIGHTNING_TRACKS_STOPPING_REASON = False

    class EarlyStoppingReason(Enum):  # type: ignore[no-redef]
        """Why ``EarlyStopping`` stopped a run: Lightning 2.6's enum (same names, same values)."""

        NOT_STOPPED = 0
        STOPPING_THRESHOLD = 1
        DIVERGENCE_THRESHOLD = 2
        PATIENCE_EXHAUSTED = 3
        NON_FINITE_METRIC = 4


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
    reason = EarlyStoppingReason
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
