"""The metric keys lightning-reg logs: one set of constants shared by the callbacks and the report."""

from __future__ import annotations

import re

__all__ = ["MAXIMISED_SCORE_NAMES", "Keys", "maximised_score_name"]

#: Last components of a metric key that name a score where higher is better (compared in lower case).
MAXIMISED_SCORE_NAMES: frozenset[str] = frozenset(
    {
        "acc", "accuracy", "acc1", "acc5", "top1", "top5", "f1", "f1score", "fbeta", "auc", "auroc", "auprc",
        "ap", "map", "map50", "map75", "iou", "miou", "jaccard", "dice", "precision", "recall", "sensitivity",
        "specificity", "mcc", "kappa", "r2", "bleu", "rouge", "psnr", "ssim", "ndcg", "mrr",
    }
)  # fmt: skip
# Lightning appends these to a key logged with both on_step and on_epoch (``val_acc_epoch``).
_LIGHTNING_SUFFIXES = ("epoch", "step")


class Keys:
    """The metric keys lightning-reg logs (``prefix`` arguments replace the first component).

    Example:
        >>> Keys.GRAD_NORM_TOTAL, Keys.grad("norm/layer1", prefix="g")
        ('grad/norm_total', 'g/norm/layer1')
    """

    GRAD_PREFIX = "grad"
    GRAD_NORM_TOTAL = "grad/norm_total"
    GRAD_NONFINITE_COUNT = "grad/nonfinite_count"
    GRAD_MAX_ABS = "grad/max_abs"
    GRAD_CLIP_NORM_PRE = "grad/clip/norm_pre"
    GRAD_CLIP_NORM_POST = "grad/clip/norm_post"
    GRAD_CLIP_COEF = "grad/clip/coef"
    GRAD_CLIP_THRESHOLD = "grad/clip/threshold"
    GRAD_CLIP_SKIPPED_STEPS = "grad/clip/skipped_steps"
    DROP_PATH_MAX_RATE = "stochastic_depth/max_rate"
    DROPOUT_MAX_RATE = "stochastic_depth/dropout_max_rate"
    OVERFIT_ALERT = "overfit/alert"
    PENALTY_VALUE = "penalty/value"
    PROXIMAL_ZERO_FRACTION = "proximal_l1/zero_fraction"
    BEST_EPOCH = "early_stopping/best_epoch"
    RESTORED_EPOCH = "early_stopping/restored_epoch"

    @staticmethod
    def grad(name: str, prefix: str = "grad") -> str:
        """``<prefix>/<name>``, e.g. ``grad/norm/<group>`` or ``grad/clip/norm_pre``.

        Example:
            >>> Keys.grad("clip/coef")
            'grad/clip/coef'
        """
        return f"{prefix}/{name}"

    @staticmethod
    def overfit(pair: str, quantity: str) -> str:
        """``overfit/<pair>_<quantity>``, e.g. ``overfit/loss_gap``.

        Example:
            >>> Keys.overfit("loss", "gap")
            'overfit/loss_gap'
        """
        return f"overfit/{pair}_{quantity}"


def maximised_score_name(key: str) -> str | None:
    """Return the component of ``key`` naming a score to maximise (``"acc"`` in ``"val_acc"``), or ``None``.

    ``key`` is split on ``/``, ``_``, ``.`` and ``-``; its last component (the one before a trailing
    ``epoch`` or ``step``, which Lightning appends to keys logged both per step and per epoch) is looked up,
    case-insensitively, in ``MAXIMISED_SCORE_NAMES``. Callbacks use it to catch an accuracy monitored
    with ``mode="min"``.

    Args:
        key: a logged metric's name.

    Returns:
        The matching component in lower case, or ``None`` if the key does not name such a score.

    Example:
        >>> maximised_score_name("val_acc"), maximised_score_name("val/Top1_epoch")
        ('acc', 'top1')
        >>> maximised_score_name("val_loss") is None, maximised_score_name("val_acc_loss") is None
        (True, True)
    """
    parts = [p for p in re.split(r"[/_.\-]", key.lower()) if p]
    if len(parts) > 1 and parts[-1] in _LIGHTNING_SUFFIXES:
        parts.pop()
    return parts[-1] if parts and parts[-1] in MAXIMISED_SCORE_NAMES else None
