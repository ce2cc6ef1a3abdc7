"""Callback applying proximal L1 (soft-thresholding) after every optimizer step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.step_logging import is_logging_step, log_step_metrics
from lightning_reg._shared.validation import check_log_every_n_steps, check_number
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.penalties.functional import decayed_parameters, proximal_l1_, zero_fraction
from lightning_reg.weight_decay.groups import DecayRule

__all__ = ["ProximalL1"]

_warning_cache = WarningCache()


class ProximalL1(Callback):
    """Soft-threshold the decayed parameters after each optimizer step: ``w <- sign(w) max(|w| - lr l1, 0)``.

    Produces exact zeros. Why proximal and not sub-gradient L1: ``l1 * sign(w)`` in the gradient pushes a
    small weight past zero and back every step, so it oscillates around zero and is never exactly zero;
    the proximal step solves the L1 part in closed form and sets every weight within ``lr * l1`` of zero
    to ``0.0`` (proximal gradient descent / ISTA for SGD; see ``lightning_reg.penalties``).
    The step runs from a ``torch.optim.Optimizer`` step post-hook, so it follows every *real* optimizer
    step: once per step under gradient accumulation, not after steps skipped by the AMP grad scaler, and
    also under manual optimization. Parameters without a gradient at that step (a step skipped by
    ``GradientClipping(skip_nonfinite=True)``, unused or frozen parameters) are left alone. Each
    parameter group uses its current ``lr`` (schedulers and layer-wise LR decay included). The
    parameters are those that get weight decay (same
    [`DecayRule`][lightning_reg.weight_decay.groups.DecayRule] as
    [`weight_decay_param_groups`][lightning_reg.weight_decay.groups.weight_decay_param_groups]). The fraction
    of exact zeros among
    them is logged as ``proximal_l1/zero_fraction`` on logging steps (no host sync). Under DDP every
    rank holds the same parameters and learning rates, so the ranks stay identical; under FSDP the
    optimizer must hold the original (sharded) parameters (``use_orig_params=True``, Lightning's
    default), the thresholding being element-wise.

    Args:
        l1: L1 coefficient, ``> 0``.
        rule: which parameters are left alone ([`DecayRule`][lightning_reg.weight_decay.groups.DecayRule]);
            ``None``: the
            module's weight-decay rule (``decay_rule`` of ``RegularizedModule``), else ``DecayRule()``.
        log_every_n_steps: log ``proximal_l1/zero_fraction`` on Lightning's logging steps; ``None``: the
            Trainer's interval, ``0``: never.
        verbose: ``0`` quiet, ``1`` one line at fit start, ``2`` also the names of the thresholded tensors.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: ``l1 <= 0`` or not finite.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[ProximalL1(l1=1e-4)], logger=False)
    """

    def __init__(
        self,
        l1: float,
        rule: DecayRule | None = None,
        log_every_n_steps: int | None = None,
        verbose: int | bool = 1,
    ) -> None:
        # > 0: a proximal step with l1 = 0 would do nothing
        self.l1 = check_number("l1", l1, low=0.0, low_open=True)
        self.rule = None if rule is None else DecayRule.coerce(rule)
        self.log_every_n_steps = check_log_every_n_steps(log_every_n_steps)
        self.verbose = check_verbose(verbose)
        self._params: list[nn.Parameter] = []
        self._handles: list[RemovableHandle] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(l1=self.l1, rule=self.rule)

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # Only parameters the optimizer just stepped: a parameter without a gradient (a step skipped by
        # GradientClipping(skip_nonfinite=True), an unused or frozen parameter) was not updated and must
        # not shrink either.
        stepped = [p for p in self._params if p.grad is not None]
        if stepped:
            proximal_l1_(optimizer, self.l1, stepped)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        rule = self.rule if self.rule is not None else getattr(pl_module, "decay_rule", None)
        self._params = decayed_parameters(pl_module, rule)
        ids = {id(p) for p in self._params}
        in_optimizers = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        if not ids & in_optimizers:
            _warning_cache.warn(
                "ProximalL1: none of the decayed parameters is in the optimizers' parameter groups "
                "(flattened parameters, e.g. FSDP without use_orig_params=True, or DeepSpeed?): nothing is "
                "thresholded."
            )
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        numel = sum(p.numel() for p in self._params)
        say(self.verbose, 1, f"ProximalL1: l1={self.l1:g} on {len(self._params)} tensors ({numel} weights).")
        if self.verbose >= 2:
            names = {id(p): n for n, p in pl_module.named_parameters()}
            listed = ", ".join(names.get(id(p), "?") for p in self._params)
            say(self.verbose, 2, f"ProximalL1 thresholds: {listed}")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._params and is_logging_step(trainer, self.log_every_n_steps):
            value = self.zero_fraction()
            if _flat_sharded(trainer):  # FSDP1: each rank holds views of its own flat shard
                zeros = torch.stack([(p == 0).sum() for p in self._params]).sum().to(value.dtype)
                counts = torch.stack([zeros, value.new_tensor(float(sum(p.numel() for p in self._params)))])
                zeros, total = trainer.strategy.reduce(counts, reduce_op="sum").unbind()
                value = zeros / total.clamp_min(1.0)
            log_step_metrics(trainer, {Keys.PROXIMAL_ZERO_FRACTION: value})

    def zero_fraction(self) -> Tensor:
        """Return the fraction of exact zeros among the thresholded parameters.

        Example:
            >>> ProximalL1(l1=0.1).zero_fraction()
            tensor(0.)
        """
        return zero_fraction(self._params)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()


def _flat_sharded(trainer: pl.Trainer) -> bool:
    """FSDPStrategy (FSDP1, ``use_orig_params=True``): parameters are views of this rank's flat shard."""
    return isinstance(trainer.strategy, FSDPStrategy)
