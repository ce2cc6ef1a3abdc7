"""``GradientClipping``: norm, value, AGC, AutoClip and ZClip clipping as a callback, sync-free."""

from __future__ import annotations

import re
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_reg.gradients.core import (
    AutoClipState,
    ZClipState,
    agc_clip_,
    autoclip_step,
    clip_coefficient,
    clip_grads_by_value_,
    grad_norms,
    scale_grads_,
    zclip_step,
)
from lightning_reg.gradients.monitor import (
    _STEP_CACHE,
    GradientMonitor,
    _check_strategy,
    _is_logging_step,
    _is_sharded,
    _read_step_grads,
    _reduce_fn,
    _step_key,
    _write_to_loggers,
)

__all__ = ["GradientClipping"]

_ALGORITHMS = ("norm", "value", "agc", "autoclip", "zclip")


class GradientClipping(Callback):
    r"""Clip gradients by norm, value, AGC, AutoClip or ZClip; optionally skip steps with non-finite grads.

    Runs in ``on_before_optimizer_step`` (after AMP unscaling, once per optimizer step under accumulation,
    after DDP's all-reduce), so it also works in manual optimization (the hook fires inside ``opt.step()``).
    The clip itself never synchronises with the host: thresholds and coefficients are tensors and gradients
    are rescaled with ``torch._foreach_mul_``. The norm pass is shared with a
    :class:`~lightning_reg.GradientMonitor` if one is present (gradients are read once per step; the
    monitor logs the pre-clip gradients).

    Algorithms:

    - ``"norm"``: total ``norm_type``-norm clipped to ``max_norm`` (``clip_grad_norm_`` semantics).
    - ``"value"``: element-wise clamp to ``[-clip_value, clip_value]`` (also a true clamp under FSDP).
    - ``"agc"``: Brock et al. 2021, unit-wise (dim 0) ``||G_i|| <= clip_factor * max(||W_i||, agc_eps)``;
      ``agc_exclude`` regexes (e.g. ``["^fc\\.", "head"]``) leave the classifier head unclipped.
    - ``"autoclip"``: Seetharaman et al. 2020, threshold = ``percentile``-th percentile of the last
      ``history_size`` total norms (including the current one).
    - ``"zclip"``: Kumar et al. 2025, EMA mean/variance (``zclip_alpha``) of the total norm after
      ``zclip_warmup_steps``; a norm with z-score above ``zclip_z_thresh`` is clipped to
      ``mean + z_thresh**2 / z * std``; the EMA is fed the clipped norm.
    - ``None``: no clipping (useful with ``skip_nonfinite=True`` alone).

    ``skip_nonfinite=True`` skips the optimizer step when any gradient is NaN/Inf: the gradients are set to
    ``None`` so the optimizer leaves those parameters (and their state) untouched. Deciding that needs
    exactly **one host sync per optimizer step** (reading one boolean), and only when this option is on; the
    count is logged as ``grad/clip/skipped_steps`` and ``max_consecutive_skips`` consecutive skips raise.

    Logged on logging steps (as tensors, straight to ``trainer.loggers``): ``grad/clip/norm_pre``,
    ``grad/clip/norm_post``, ``grad/clip/coef`` (norm-based algorithms), ``grad/clip/threshold``
    (``autoclip``/``zclip``) and ``grad/clip/skipped_steps``.

    Strategies: single device and DDP (gradients are replicated, so adaptive state is identical on all ranks);
    FSDP/ModelParallel for ``norm``, ``value``, ``autoclip`` and ``zclip`` (the total norm is the root of the
    all-reduced sum of local squares); ``agc`` needs whole parameter rows and raises under sharded strategies.
    DeepSpeed clips inside its engine and is rejected at setup. ``Trainer(gradient_clip_val=...)`` together
    with this callback is an error at setup.

    Args:
        algorithm: one of ``"norm"``, ``"value"``, ``"agc"``, ``"autoclip"``, ``"zclip"`` or ``None``.
        max_norm: threshold for ``"norm"``.
        norm_type: p of the norm for ``"norm"``, and of the logged/adaptive total norm.
        clip_value: bound for ``"value"``.
        clip_factor: AGC's lambda.
        agc_eps: AGC's floor on the weight norm.
        agc_exclude: regexes of parameter names AGC leaves alone (e.g. the classifier head).
        percentile: AutoClip's percentile in ``[0, 100]``.
        history_size: AutoClip's bounded history length.
        zclip_alpha: ZClip's EMA decay in ``(0, 1)``.
        zclip_z_thresh: ZClip's z-score threshold.
        zclip_warmup_steps: ZClip's warm-up steps (no clipping; they initialise mean and variance).
        skip_nonfinite: skip optimizer steps with NaN/Inf gradients (one host sync per step).
        max_consecutive_skips: raise after this many consecutive skipped steps.
        log_every_n_steps: log every N optimizer steps (default: the Trainer's); ``0`` disables logging.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_reg import GradientClipping
        >>> trainer = pl.Trainer(callbacks=[GradientClipping("zclip")], logger=False)
    """

    def __init__(
        self,
        algorithm: str | None = "norm",
        max_norm: float = 1.0,
        norm_type: float = 2.0,
        clip_value: float = 1.0,
        clip_factor: float = 0.01,
        agc_eps: float = 1e-3,
        agc_exclude: list[str] | None = None,
        percentile: float = 10.0,
        history_size: int = 1000,
        zclip_alpha: float = 0.97,
        zclip_z_thresh: float = 2.5,
        zclip_warmup_steps: int = 25,
        skip_nonfinite: bool = False,
        max_consecutive_skips: int = 10,
        log_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if algorithm is not None and algorithm not in _ALGORITHMS:
            raise ValueError(f"`algorithm` must be one of {_ALGORITHMS} or None, got {algorithm!r}.")
        if algorithm is None and not skip_nonfinite:
            raise ValueError("`algorithm=None` only makes sense with `skip_nonfinite=True`.")
        checks: list[tuple[str, Any, bool, str]] = [
            ("max_norm", max_norm, max_norm > 0, "> 0"),
            ("norm_type", norm_type, float(norm_type) > 0, "> 0 (or inf)"),
            ("clip_value", clip_value, clip_value > 0, "> 0"),
            ("clip_factor", clip_factor, clip_factor > 0, "> 0"),
            ("agc_eps", agc_eps, agc_eps >= 0, ">= 0"),
            ("percentile", percentile, 0 <= percentile <= 100, "in [0, 100]"),
            ("history_size", history_size, history_size >= 1, ">= 1"),
            ("zclip_alpha", zclip_alpha, 0 < zclip_alpha < 1, "in (0, 1)"),
            ("zclip_z_thresh", zclip_z_thresh, zclip_z_thresh > 0, "> 0"),
            ("zclip_warmup_steps", zclip_warmup_steps, zclip_warmup_steps >= 1, ">= 1"),
            ("max_consecutive_skips", max_consecutive_skips, max_consecutive_skips >= 1, ">= 1"),
            ("log_every_n_steps", log_every_n_steps, log_every_n_steps is None or log_every_n_steps >= 0,
             ">= 0 or None"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"`{name}` must be {rule}, got {value!r}.")
        self.algorithm = algorithm
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.clip_value = float(clip_value)
        self.clip_factor = float(clip_factor)
        self.agc_eps = float(agc_eps)
        self.agc_exclude = list(agc_exclude or [])
        try:
            self._agc_exclude_rx = [re.compile(rx) for rx in self.agc_exclude]
        except re.error as err:
            msg = f"`agc_exclude` must hold valid regexes, got {self.agc_exclude!r}: {err}."
            raise ValueError(msg) from err
        self.percentile = float(percentile)
        self.history_size = int(history_size)
        self.zclip_alpha = float(zclip_alpha)
        self.zclip_z_thresh = float(zclip_z_thresh)
        self.zclip_warmup_steps = int(zclip_warmup_steps)
        self.skip_nonfinite = skip_nonfinite
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.log_every_n_steps = log_every_n_steps
        self.autoclip_state: AutoClipState | None = None
        self.zclip_state: ZClipState | None = None
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.last_metrics: dict[str, Tensor] = {}
        self._done_key: tuple[int, int, float] | None = None
        self._excluded: set[int] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(algorithm=self.algorithm, norm_type=self.norm_type)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _check_strategy(trainer, type(self).__name__)
        _STEP_CACHE.pop(trainer, None)
        self._done_key = None
        if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
            raise MisconfigurationException(
                f"`Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and `GradientClipping` would"
                " clip twice. Use one: remove `gradient_clip_val` from the Trainer (GradientClipping("
                "algorithm='norm', max_norm=...) or algorithm='value' do the same), or drop the callback."
            )
        if sum(isinstance(cb, GradientClipping) for cb in trainer.callbacks) > 1:
            raise MisconfigurationException("Only one `GradientClipping` callback may be used per Trainer.")
        if self.algorithm == "agc" and _is_sharded(trainer):
            raise MisconfigurationException(
                f"`GradientClipping(algorithm='agc')` needs whole parameter rows and is not supported under"
                f" `{type(trainer.strategy).__name__}`; use 'norm', 'value', 'autoclip' or 'zclip'."
            )
        self._excluded = {
            id(p)
            for name, p in pl_module.named_parameters()
            if any(rx.search(name) for rx in self._agc_exclude_rx)
        }
        if self.algorithm == "agc" and self.agc_exclude and not self._excluded:
            rank_zero_warn(f"`agc_exclude={self.agc_exclude!r}` matched no parameter name; nothing excluded.")

    def _log_every(self, trainer: pl.Trainer) -> bool:
        if self.log_every_n_steps == 0:
            return False
        return _is_logging_step(trainer, self.log_every_n_steps)

    def clip_(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Clip (and possibly skip) this step's gradients now; idempotent within an optimizer step.

        The callback calls this from ``on_before_optimizer_step``. In manual optimization you may call it
        yourself where you would call ``self.clip_gradients(...)`` (before ``opt.step()``; not under
        ``precision="16-mixed"``, whose gradients are only unscaled inside ``opt.step()``); the hook then does
        not clip again in that step.

        Args:
            trainer: the trainer.
            pl_module: the module.
            optimizer: the (unwrapped or Lightning-wrapped) optimizer.

        Example:
            >>> GradientClipping().clip_  # doctest: +ELLIPSIS
            <bound method GradientClipping.clip_ of ...>
        """
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer
        key = _step_key(trainer, optimizer, self.norm_type)
        if self._done_key == key:
            return
        self._done_key = key
        # A present GradientMonitor reads the pre-clip gradients first; its norm pass is then reused.
        for cb in trainer.callbacks:
            if isinstance(cb, GradientMonitor) and cb.norm_type == self.norm_type:
                cb.observe(trainer, pl_module, optimizer)
        log = self._log_every(trainer)
        needs_total = log or self.skip_nonfinite or self.algorithm in ("norm", "autoclip", "zclip")
        step = None
        if needs_total:
            step, _ = _read_step_grads(trainer, optimizer, self.norm_type)
            if not step.grads:
                return
        if self.skip_nonfinite:
            assert step is not None
            if self._skip_if_nonfinite(step.total, step.params, trainer):
                if log:
                    self._log(trainer, {"skipped_steps": torch.tensor(self.skipped_steps)})
                return
        metrics: dict[str, Tensor] = {}
        params = step.params if step is not None else [
            p for g in optimizer.param_groups for p in g["params"] if p.grad is not None
        ]
        grads = step.grads if step is not None else [p.grad for p in params]
        total = step.total if step is not None else None
        coef = None
        if self.algorithm == "norm":
            assert total is not None
            coef = clip_coefficient(total, self.max_norm)
        elif self.algorithm == "autoclip":
            assert total is not None
            if self.autoclip_state is None:
                self.autoclip_state = AutoClipState.create(self.history_size, device=total.device)
            self._move_state(total.device)
            thr = autoclip_step(self.autoclip_state, total, self.percentile)
            coef = clip_coefficient(total, thr)
            metrics["threshold"] = thr
        elif self.algorithm == "zclip":
            assert total is not None
            if self.zclip_state is None:
                self.zclip_state = ZClipState.create(self.zclip_warmup_steps, device=total.device)
            self._move_state(total.device)
            target, coef = zclip_step(self.zclip_state, total, self.zclip_alpha, self.zclip_z_thresh)
            metrics["threshold"] = target
        elif self.algorithm == "value":
            clip_grads_by_value_(params, self.clip_value)
        elif self.algorithm == "agc":
            agc_clip_([p for p in params if id(p) not in self._excluded], self.clip_factor, self.agc_eps)
        if coef is not None:
            scale_grads_(grads, coef)
        if log:
            assert total is not None
            metrics["norm_pre"] = total
            if coef is not None:
                metrics["coef"] = coef
                metrics["norm_post"] = total * coef
            elif self.algorithm in ("value", "agc"):
                reduce_fn = _reduce_fn(trainer, self.norm_type)
                metrics["norm_post"] = grad_norms(grads, self.norm_type, reduce_fn=reduce_fn).total
            else:
                metrics["norm_post"] = total
            if self.skip_nonfinite:
                metrics["skipped_steps"] = torch.tensor(self.skipped_steps)
            self._log(trainer, metrics)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, Tensor]) -> None:
        metrics = {f"grad/clip/{k}": v for k, v in metrics.items()}
        self.last_metrics = metrics
        _write_to_loggers(trainer, metrics)

    def _skip_if_nonfinite(self, total: Tensor, params: list[Tensor], trainer: pl.Trainer) -> bool:
        # The one host sync of skip_nonfinite=True: every rank reads the same (all-reduced) total norm.
        if bool(torch.isfinite(total)):
            self.consecutive_skips = 0
            return False
        for p in params:
            p.grad = None  # the optimizer then leaves these parameters and their state untouched
        self.skipped_steps += 1
        self.consecutive_skips += 1
        rank_zero_warn(
            f"GradientClipping: non-finite gradients at global step {trainer.global_step}; optimizer step"
            f" skipped ({self.consecutive_skips} consecutive, {self.skipped_steps} total)."
        )
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise RuntimeError(
                f"GradientClipping(skip_nonfinite=True) skipped {self.consecutive_skips} consecutive"
                f" optimizer steps because of NaN/Inf gradients (max_consecutive_skips="
                f"{self.max_consecutive_skips}). Training is diverging: lower the learning rate, check the"
                " data or the loss, or use a GradScaler."
            )
        return True

    def _move_state(self, device: torch.device) -> None:
        for state in (self.autoclip_state, self.zclip_state):
            if state is None:
                continue
            for name, value in vars(state).items():
                if value.device != device:
                    setattr(state, name, value.to(device))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.clip_(trainer, pl_module, optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
        }
        if self.autoclip_state is not None:
            out["autoclip"] = {k: v.detach().cpu().clone() for k, v in vars(self.autoclip_state).items()}
        if self.zclip_state is not None:
            out["zclip"] = {k: v.detach().cpu().clone() for k, v in vars(self.zclip_state).items()}
        return out

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive_skips = int(state_dict.get("consecutive_skips", 0))
        if "autoclip" in state_dict:
            s = state_dict["autoclip"]
            self.autoclip_state = AutoClipState(s["history"].clone(), s["count"].clone())
        if "zclip" in state_dict:
            s = state_dict["zclip"]
            self.zclip_state = ZClipState(s["mean"].clone(), s["var"].clone(), s["warmup"].clone(),
                                          s["count"].clone())
