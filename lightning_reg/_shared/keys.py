"""The metric keys lightning-reg logs: one set of constants shared by the callbacks and the report."""

from __future__ import annotations

__all__ = ["Keys"]


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
