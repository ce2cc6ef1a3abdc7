"""``GradientClipping``: norm, value, AGC, AutoClip and ZClip clipping as a callback, sync-free."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.names import NameSelector, strip_wrapper_prefixes
from lightning_reg._shared.step_logging import is_logging_step, log_interval, log_step_metrics
from lightning_reg._shared.validation import (
    check_bool,
    check_choice,
    check_int,
    check_log_every_n_steps,
    check_number,
    check_str,
    check_str_list,
)
from lightning_reg._shared.verbosity import check_verbose, say
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
    _is_sharded,
    _read_step_grads,
    _reduce_fn,
    _step_key,
)

__all__ = ["GradientClipping"]

_ALGORITHMS = ("norm", "value", "agc", "autoclip", "zclip", None)


#: The algorithm each algorithm-specific argument belongs to (``norm_type`` serves them all).
_ARGUMENT_OF = {
    "max_norm": "norm",
    "clip_value": "value",
    "clip_factor": "agc",
    "agc_eps": "agc",
    "agc_exclude": "agc",
    "percentile": "autoclip",
    "history_size": "autoclip",
    "zclip_alpha": "zclip",
    "zclip_z_thresh": "zclip",
    "zclip_warmup_steps": "zclip",
}


def _check_unused_arguments(algorithm: str | None, **given: Any) -> None:
    """Refuse an argument of another algorithm set to a value other than its default (it would do nothing).

    Example:
        >>> _check_unused_arguments("zclip", max_norm=5.0)
        Traceback (most recent call last):
        ...
        ValueError: GradientClipping(algorithm='zclip') does not use max_norm=5.0 (an argument of 'norm'); ...
    """
    defaults = inspect.signature(GradientClipping.__init__).parameters
    unused = [
        f"{name}={value!r} (an argument of {_ARGUMENT_OF[name]!r})"
        for name, value in given.items()
        if _ARGUMENT_OF[name] != algorithm and value != defaults[name].default
    ]
    if unused:
        raise ValueError(
            f"GradientClipping(algorithm={algorithm!r}) does not use {', '.join(unused)}; remove "
            f"{'it' if len(unused) == 1 else 'them'}, or choose that algorithm."
        )


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
      ``agc_exclude`` names (the library's selector syntax, e.g. ``["net.fc"]`` for a model held as
      ``self.net``, or ``["*.head", "*.cls_token"]``)
      leave the classifier head unclipped.
    - ``"autoclip"``: Seetharaman et al. 2020, threshold = ``percentile``-th percentile (in percent, e.g.
      ``10.0``) of the last ``history_size`` total norms (including the current one).
    - ``"zclip"``: Kumar et al. 2025, EMA mean/variance (``zclip_alpha``) of the total norm after
      ``zclip_warmup_steps``; a norm with z-score above ``zclip_z_thresh`` is clipped to
      ``mean + z_thresh**2 / z * std``; the EMA is fed the clipped norm.
    - ``None``: no clipping (useful with ``skip_nonfinite=True`` alone).

    ``skip_nonfinite=True`` skips the optimizer step when any gradient is NaN/Inf: the gradients are set to
    ``None`` so the optimizer leaves those parameters (and their state) untouched. Deciding that needs
    exactly **one host sync per optimizer step** (reading one boolean), and only when this option is on; the
    count is logged as ``grad/clip/skipped_steps`` and ``max_consecutive_skips`` consecutive skips raise.

    Logged on logging steps (Lightning's rule; written to the loggers and to ``trainer.callback_metrics``,
    so they can be monitored): ``grad/clip/norm_pre``, ``grad/clip/norm_post``, ``grad/clip/coef``
    (norm-based algorithms), ``grad/clip/threshold`` (``autoclip``/``zclip``) and
    ``grad/clip/skipped_steps`` (``grad`` is ``prefix``).

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
        agc_exclude: parameter names AGC leaves alone (e.g. the classifier head), in the library's name
            selector syntax: a dotted name or prefix, a glob, or ``re:<regex>``.
        percentile: AutoClip's percentile, in percent: ``0`` or a number in ``[1, 100]`` (a value in
            ``(0, 1)`` looks like a fraction and is refused).
        history_size: AutoClip's bounded history length.
        zclip_alpha: ZClip's EMA decay in ``(0, 1)``.
        zclip_z_thresh: ZClip's z-score threshold.
        zclip_warmup_steps: ZClip's warm-up steps (no clipping; they initialise mean and variance).
        skip_nonfinite: skip optimizer steps with NaN/Inf gradients (one host sync per step).
        max_consecutive_skips: raise after this many consecutive skipped steps.
        log_every_n_steps: logging interval in optimizer steps; ``None``: the Trainer's; ``0``: never.
        prefix: first component of every key (as :class:`GradientMonitor`'s ``prefix``).
        verbose: 0 quiet; 1 one line at fit start; 2 details.

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
        prefix: str = "grad",
        verbose: int | bool = 1,
    ) -> None:
        super().__init__()
        check_choice("algorithm", algorithm, _ALGORITHMS)
        self.skip_nonfinite = check_bool("skip_nonfinite", skip_nonfinite)
        if algorithm is None and not skip_nonfinite:
            raise ValueError("`algorithm=None` only makes sense with `skip_nonfinite=True`.")
        self.algorithm = algorithm
        self.max_norm = check_number("max_norm", max_norm, low=0, low_open=True)
        self.norm_type = check_number("norm_type", norm_type, low=0, low_open=True, finite=False)
        self.clip_value = check_number("clip_value", clip_value, low=0, low_open=True)
        self.clip_factor = check_number("clip_factor", clip_factor, low=0, low_open=True)
        self.agc_eps = check_number("agc_eps", agc_eps, low=0)
        self.agc_exclude = check_str_list("agc_exclude", agc_exclude, none_ok=True) or []
        self._agc_selector = NameSelector(self.agc_exclude, name="agc_exclude")
        self.percentile = check_number("percentile", percentile, low=0, high=100)
        if 0 < self.percentile < 1:
            raise ValueError(
                f"`percentile` is in percent (0 to 100); got {percentile!r}, which looks like a fraction:"
                f" pass {self.percentile * 100:g} for the {self.percentile * 100:g}th percentile (values in"
                " (0, 1) are refused)."
            )
        self.history_size = check_int("history_size", history_size, low=1)
        self.zclip_alpha = check_number(
            "zclip_alpha", zclip_alpha, low=0, high=1, low_open=True, high_open=True
        )
        self.zclip_z_thresh = check_number("zclip_z_thresh", zclip_z_thresh, low=0, low_open=True)
        self.zclip_warmup_steps = check_int("zclip_warmup_steps", zclip_warmup_steps, low=1)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, low=1)
        _check_unused_arguments(
            algorithm,
            max_norm=max_norm,
            clip_value=clip_value,
            clip_factor=clip_factor,
            agc_eps=agc_eps,
            agc_exclude=agc_exclude or None,
            percentile=percentile,
            history_size=history_size,
            zclip_alpha=zclip_alpha,
            zclip_z_thresh=zclip_z_thresh,
            zclip_warmup_steps=zclip_warmup_steps,
        )
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.prefix = check_str("prefix", prefix)
        self.verbose = check_verbose(verbose)
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
        names = {strip_wrapper_prefixes(name): p for name, p in pl_module.named_parameters()}
        self._excluded = {id(p) for name, p in names.items() if self._agc_selector.matches(name)}
        message = self._agc_selector.unmatched_message(names)
        if self.algorithm == "agc" and message:
            rank_zero_warn(f"GradientClipping on {type(pl_module).__name__}: {message}")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = log_interval(trainer, self.log_every_n_steps)
        rule = {
            "norm": f"total L{self.norm_type:g} norm <= {self.max_norm:g}",
            "value": f"|g| <= {self.clip_value:g}",
            "agc": f"AGC clip_factor={self.clip_factor:g}"
            + (f", {len(self._excluded)} tensors excluded" if self.agc_exclude else ""),
            "autoclip": f"AutoClip {self.percentile:g}th percentile of the last {self.history_size} norms",
            "zclip": f"ZClip z > {self.zclip_z_thresh:g} after {self.zclip_warmup_steps} warm-up steps",
            None: "no clipping",
        }[self.algorithm]
        skip = ", non-finite steps skipped" if self.skip_nonfinite else ""
        logs = "not logged" if n == 0 else f"logged every {n} optimizer steps"
        say(self.verbose, 1, f"GradientClipping: {rule}{skip}; {self.prefix}/clip/* {logs}.")

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
            Manual optimization, clipping before the step and reading the post-clip norm:

            >>> import lightning as L
            >>> clipper = GradientClipping("norm", max_norm=0.5, log_every_n_steps=1, verbose=0)
            >>> class Manual(L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.automatic_optimization = False
            ...         self.layer = torch.nn.Linear(4, 1)
            ...     def training_step(self, batch, batch_idx):
            ...         opt = self.optimizers()
            ...         opt.zero_grad()
            ...         self.manual_backward(self.layer(batch[0]).pow(2).mean() * 100)
            ...         clipper.clip_(self.trainer, self, opt)
            ...         opt.step()
            ...     def configure_optimizers(self):
            ...         return torch.optim.SGD(self.parameters(), lr=0.1)
            >>> from torch.utils.data import DataLoader, TensorDataset
            >>> data = DataLoader(TensorDataset(torch.ones(8, 4)), batch_size=4)
            >>> trainer = L.Trainer(max_steps=2, callbacks=[clipper], logger=False, enable_progress_bar=False,
            ...                     enable_checkpointing=False, enable_model_summary=False)
            >>> trainer.fit(Manual(), data)
            >>> round(float(clipper.last_metrics["grad/clip/norm_post"]), 4)
            0.5
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
        log = is_logging_step(trainer, self.log_every_n_steps)
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
        metrics = {Keys.grad(f"clip/{k}", self.prefix): v for k, v in metrics.items()}
        self.last_metrics = metrics
        log_step_metrics(trainer, metrics)

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
