"""``GradientClipping``: norm, value, AGC, AutoClip and ZClip clipping as a callback, sync-free."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.names import strip_wrapper_prefixes
from lightning_reg._shared.step_logging import is_logging_step, log_interval, log_step_metrics
from lightning_reg._shared.validation import (
    check_bool,
    check_choice,
    check_int,
    check_log_every_n_steps,
    check_str,
)
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.gradients.clip_rules import CLIP_RULES, ClipRule
from lightning_reg.gradients.functional import check_norm_type, grad_norms
from lightning_reg.gradients.shared_gradients import SharedGradients, StepGradients

__all__ = ["GradientClipping"]

_ALGORITHMS = (*CLIP_RULES, None)

#: The rule each rule-specific argument belongs to (``norm_type`` serves them all).
_OWNER = {option: name for name, rule in CLIP_RULES.items() for option in rule.options}


def _make_rule(algorithm: str | None, options: dict[str, Any]) -> ClipRule | None:
    """Build the rule of ``algorithm`` from the arguments given (``None``: not given).

    An argument of another rule would do nothing: it is refused whatever its value, naming the rule it
    belongs to.

    Example:
        >>> _make_rule("zclip", {"max_norm": 1.0, "zclip_alpha": None})
        Traceback (most recent call last):
        ...
        ValueError: GradientClipping(algorithm='zclip') does not use max_norm=1.0 (an argument of 'norm'); ...
    """
    given = {name: value for name, value in options.items() if value is not None}
    rule = CLIP_RULES.get(algorithm) if algorithm is not None else None
    own = rule.options if rule is not None else ()
    unused = [(name, value) for name, value in given.items() if name not in own]
    if unused:
        listed = ", ".join(f"{name}={value!r} (an argument of {_OWNER[name]!r})" for name, value in unused)
        raise ValueError(
            f"GradientClipping(algorithm={algorithm!r}) does not use {listed}; remove "
            f"{'it' if len(unused) == 1 else 'them'}, or choose that algorithm."
        )
    return None if rule is None else rule(**given)


class GradientClipping(Callback):
    r"""Clip gradients by norm, value, AGC, AutoClip or ZClip; optionally skip steps with non-finite grads.

    Runs in ``on_before_optimizer_step`` (after AMP unscaling, once per optimizer step under accumulation,
    after DDP's all-reduce), so it also works in manual optimization (the hook fires inside ``opt.step()``).
    The clip itself never synchronises with the host: thresholds and coefficients are tensors and gradients
    are rescaled with ``torch._foreach_mul_``. The norm pass is shared with a
    [`GradientMonitor`][lightning_reg.gradients.monitor.GradientMonitor] if one is present (gradients are read
    once per step; the
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
        algorithm: one of ``"norm"``, ``"value"``, ``"agc"``, ``"autoclip"``, ``"zclip"`` or ``None``; the
            rule is built as a ``ClipRule`` (``clip.rule``) from the arguments below that belong to it.
        max_norm: threshold for ``"norm"`` (default ``1.0``).
        norm_type: p of the norm for ``"norm"``, and of the logged/adaptive total norm: a number ``> 0``,
            ``float("inf")`` or the string ``"inf"``.
        clip_value: bound for ``"value"`` (default ``1.0``).
        clip_factor: AGC's lambda (default ``0.01``).
        agc_eps: AGC's floor on the weight norm (default ``1e-3``).
        agc_exclude: parameter names AGC leaves alone (e.g. the classifier head), in the library's name
            selector syntax: a dotted name or prefix, a glob, or ``re:<regex>``.
        percentile: AutoClip's percentile, in percent: ``0`` or a number in ``[1, 100]`` (a value in
            ``(0, 1)`` looks like a fraction and is refused; default ``10.0``).
        history_size: AutoClip's bounded history length (default ``1000``).
        zclip_alpha: ZClip's EMA decay in ``(0, 1)`` (default ``0.97``).
        zclip_z_thresh: ZClip's z-score threshold (default ``2.5``).
        zclip_warmup_steps: ZClip's warm-up steps (no clipping; they initialise mean and variance; default
            ``25``).
        skip_nonfinite: skip optimizer steps with NaN/Inf gradients (one host sync per step).
        max_consecutive_skips: raise after this many consecutive skipped steps.
        log_every_n_steps: logging interval in optimizer steps; ``None``: the Trainer's; ``0``: never.
        prefix: first component of every key (as ``GradientMonitor``'s ``prefix``).
        verbose: 0 quiet; 1 one line at fit start; 2 details.

    The rule options default to ``None``, which means "the rule's default": an option of another rule is
    refused whatever its value (``GradientClipping("agc", max_norm=1.0)`` raises, naming ``'norm'``).

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_reg import GradientClipping
        >>> clip = GradientClipping("zclip", zclip_z_thresh=3.0)
        >>> type(clip.rule).__name__, clip.rule.zclip_z_thresh, clip.rule.zclip_alpha
        ('ZClipRule', 3.0, 0.97)
        >>> trainer = pl.Trainer(callbacks=[clip], logger=False)
    """

    def __init__(
        self,
        algorithm: str | None = "norm",
        max_norm: float | None = None,
        norm_type: float | str = 2.0,
        clip_value: float | None = None,
        clip_factor: float | None = None,
        agc_eps: float | None = None,
        agc_exclude: list[str] | None = None,
        percentile: float | None = None,
        history_size: int | None = None,
        zclip_alpha: float | None = None,
        zclip_z_thresh: float | None = None,
        zclip_warmup_steps: int | None = None,
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
        self.norm_type = check_norm_type(norm_type)
        options = dict(
            max_norm=max_norm,
            clip_value=clip_value,
            clip_factor=clip_factor,
            agc_eps=agc_eps,
            agc_exclude=agc_exclude,
            percentile=percentile,
            history_size=history_size,
            zclip_alpha=zclip_alpha,
            zclip_z_thresh=zclip_z_thresh,
            zclip_warmup_steps=zclip_warmup_steps,
        )
        #: The clipping rule (``None`` for ``algorithm=None``): its options and resumable state.
        self.rule = _make_rule(algorithm, options)
        self.max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, low=1)
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.prefix = check_str("prefix", prefix)
        self.verbose = check_verbose(verbose)
        #: The gradients of the current step, shared with a ``GradientMonitor`` (set at setup).
        self.shared_gradients: SharedGradients | None = None
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.last_metrics: dict[str, Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(algorithm=self.algorithm, norm_type=self.norm_type)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        shared = self.shared_gradients = SharedGradients.join(trainer, self)
        shared.check_strategy(type(self).__name__)
        if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
            raise MisconfigurationException(
                f"`Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and `GradientClipping` would"
                " clip twice. Use one: remove `gradient_clip_val` from the Trainer (GradientClipping("
                "algorithm='norm', max_norm=...) or algorithm='value' do the same), or drop the callback."
            )
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        if sum(isinstance(cb, GradientClipping) for cb in callbacks) > 1:
            raise MisconfigurationException("Only one `GradientClipping` callback may be used per Trainer.")
        if self.rule is None:
            return
        if not self.rule.supports_sharding and shared.sharded:
            raise MisconfigurationException(
                f"`GradientClipping(algorithm={self.algorithm!r})` needs whole parameter rows and is not"
                f" supported under `{type(trainer.strategy).__name__}`; use one of"
                f" {[n for n, r in CLIP_RULES.items() if r.supports_sharding]}."
            )
        names = {strip_wrapper_prefixes(name): p for name, p in pl_module.named_parameters()}
        message = self.rule.bind(names)
        if message:
            rank_zero_warn(f"GradientClipping on {type(pl_module).__name__}: {message}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.shared_gradients = None  # the next fit shares a fresh one

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.shared_gradients = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = log_interval(trainer, self.log_every_n_steps)
        rule = "no clipping" if self.rule is None else self.rule.describe()
        skip = ", non-finite steps skipped" if self.skip_nonfinite else ""
        logs = "not logged" if n == 0 else f"logged every {n} optimizer steps"
        norms = f"L{self.norm_type:g} norms in {self.prefix}/clip/*"
        say(self.verbose, 1, f"GradientClipping: {rule}{skip}; {norms} {logs}.")

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
        shared = self._shared(trainer)
        if not shared.first_call(self, optimizer):
            return
        shared.before_change(trainer, pl_module, optimizer)  # a GradientMonitor logs the pre-clip gradients
        log = is_logging_step(trainer, self.log_every_n_steps)
        needs_total = log or self.skip_nonfinite or (self.rule is not None and self.rule.uses_total_norm)
        step = shared.read(optimizer, self.norm_type) if needs_total else shared.gradients(optimizer)
        if not step.grads:
            return
        if self.skip_nonfinite:
            assert step.total is not None
            if self._skip_if_nonfinite(step.total, step.params, trainer):
                if log:
                    self._log(trainer, {"skipped_steps": torch.tensor(self.skipped_steps)})
                return
        clipped = {} if self.rule is None else self.rule.clip_(step.params, step.grads, step.total)
        if log:
            self._log(trainer, self._clip_metrics(step, clipped, shared))

    def _shared(self, trainer: pl.Trainer) -> SharedGradients:
        """Return the step's shared gradients; a private instance when called outside a fit's setup."""
        if self.shared_gradients is None or self.shared_gradients.trainer is not trainer:
            self.shared_gradients = SharedGradients.join(trainer, self)
        return self.shared_gradients

    def _clip_metrics(
        self, step: StepGradients, clipped: dict[str, Tensor], shared: SharedGradients
    ) -> dict[str, Tensor]:
        """Pre- and post-clip norms and what the rule reported (coefficient, threshold)."""
        assert step.total is not None
        metrics = {"norm_pre": step.total, **clipped}
        if "coef" in clipped:
            metrics["norm_post"] = step.total * clipped["coef"]
        elif self.rule is not None:  # element-wise rules: measure again
            reduce_fn = shared.reduce_fn(self.norm_type)
            metrics["norm_post"] = grad_norms(step.grads, self.norm_type, reduce_fn=reduce_fn).total
        else:
            metrics["norm_post"] = step.total
        if self.skip_nonfinite:
            metrics["skipped_steps"] = torch.tensor(self.skipped_steps)
        return metrics

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
        if self.rule is not None and (rule_state := self.rule.state_dict()):
            out[self.rule.name] = rule_state  # "autoclip": the norm history, "zclip": the EMA statistics
        return out

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive_skips = int(state_dict.get("consecutive_skips", 0))
        if self.rule is not None and self.rule.name in state_dict:
            self.rule.load_state_dict(state_dict[self.rule.name])
