"""``PenaltyMixin``: the L1 / L2 / elastic-net penalty of ``penalties.functional`` in a module."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.step_logging import is_logging_step, log_step_metrics
from lightning_reg.penalties.functional import (
    WeightPenalty,
    add_penalty_grad_,
    decayed_parameters,
    elastic_net_penalty,
)

__all__ = ["PenaltyMixin"]

_warning_cache = WarningCache()

if TYPE_CHECKING:
    # A mixin put before ``LightningModule`` in the bases: type checkers see its methods on one, so its
    # ``super()`` calls reach the module's hooks; at run time it adds no base.
    _LightningModuleMixin = pl.LightningModule
else:
    _LightningModuleMixin = object


class PenaltyMixin(_LightningModuleMixin):
    """LightningModule mixin: explicit L1/L2/elastic-net penalty on the decayed parameters.

    Put it before ``LightningModule`` in the bases and set ``self.weight_penalty = WeightPenalty(...)``.
    Automatic mode (default) adds the penalty gradient in ``on_before_optimizer_step`` (nothing to change
    in ``training_step``); manual mode (``automatic=False``): ``loss = loss + self.penalty()``. The
    decayed-parameter list is classified once per fit (at ``on_fit_start``) and cached. If your module
    overrides ``on_before_optimizer_step`` or ``on_fit_start``, call ``super()`` in it: an
    ``on_before_optimizer_step`` override that never calls ``super()`` would skip the automatic penalty,
    so fit refuses to start with it (``RuntimeError`` at ``on_fit_start``).

    Example:
        >>> import lightning as L
        >>> class Net(PenaltyMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = nn.Linear(2, 1)
        ...         self.weight_penalty = WeightPenalty(l2=0.1, automatic=False)
        >>> net = Net()
        >>> with torch.no_grad():
        ...     _ = net.layer.weight.fill_(2.0)
        >>> round(net.penalty().item(), 4)  # 0.1 / 2 * (2**2 + 2**2)
        0.4
    """

    weight_penalty: WeightPenalty | None = None
    _penalty_params: list[nn.Parameter] | None = None

    def penalty_parameters(self) -> list[nn.Parameter]:
        """Return the decayed parameters the penalty applies to (cached; see ``decayed_parameters``).

        Example:
            >>> import lightning as L
            >>> class Net(PenaltyMixin, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.body = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
            ...         self.weight_penalty = WeightPenalty(l1=1e-4)
            >>> [tuple(p.shape) for p in Net().penalty_parameters()]  # no bias, no norm parameters
            [(3, 4)]
        """
        if self._penalty_params is None:
            config = self.weight_penalty
            rule = config.resolve_rule(self) if config is not None else getattr(self, "decay_rule", None)
            self._penalty_params = decayed_parameters(self, rule)
        return self._penalty_params

    def penalty(self) -> Tensor:
        """Return the weighted penalty ``l1 * sum|w| + l2 / 2 * sum w**2`` (0 without ``weight_penalty``).

        Example:
            >>> import lightning as L
            >>> class Net(PenaltyMixin, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.layer = nn.Linear(2, 1)
            ...         self.weight_penalty = WeightPenalty(l1=0.5, automatic=False)
            >>> net = Net()
            >>> with torch.no_grad():
            ...     _ = net.layer.weight.copy_(torch.tensor([[1.0, -3.0]]))
            >>> net.penalty()  # 0.5 * (|1| + |-3|); add it to your loss in training_step
            tensor(2., grad_fn=<_ElasticNetBackward>)
        """
        config = self.weight_penalty
        if config is None:
            return torch.zeros(())
        trainer = getattr(self, "_trainer", None)
        if config.automatic and trainer is not None and trainer.training:
            _warning_cache.warn(
                "PenaltyMixin.penalty() called during training with WeightPenalty(automatic=True): the "
                "penalty gradient is already added before each optimizer step; adding penalty() to the loss "
                "applies it twice. Use automatic=False to add it yourself."
            )
        return elastic_net_penalty(self.penalty_parameters(), config.l1, config.l2)

    def on_fit_start(self) -> None:
        """Re-classify the penalised parameters for this fit (after the strategy wrapped the model).

        Example:
            A head added after the module was built is penalised from the next fit on:

            >>> import lightning as L
            >>> class Net(PenaltyMixin, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.body = nn.Linear(4, 4)
            ...         self.weight_penalty = WeightPenalty(l2=1e-4)
            >>> net = Net()
            >>> len(net.penalty_parameters())
            1
            >>> net.head = nn.Linear(4, 2)
            >>> net.on_fit_start()
            >>> len(net.penalty_parameters())
            2
        """
        super().on_fit_start()
        self._check_penalty_hook_chain()
        self._penalty_params = None
        self._penalty_params_by_optimizer: dict[int, list[nn.Parameter]] = {}

    def _check_penalty_hook_chain(self) -> None:
        """Refuse an ``on_before_optimizer_step`` override that never calls ``super()`` (automatic penalty).

        The override's code must mention ``super`` or ``on_before_optimizer_step`` (an explicit
        ``Base.on_before_optimizer_step(self, optimizer)``); otherwise the chain to this mixin is cut and
        the automatic penalty would silently never be added.
        """
        config = self.weight_penalty
        if config is None or not config.automatic:
            return
        for cls in type(self).__mro__:
            if cls is PenaltyMixin:
                return
            fn = cls.__dict__.get("on_before_optimizer_step")
            code = getattr(fn, "__code__", None)
            if code is None:
                continue
            if "super" in code.co_names or "on_before_optimizer_step" in code.co_names:
                continue
            raise RuntimeError(
                f"{cls.__qualname__}.on_before_optimizer_step does not call super().on_before_optimizer_step"
                "(optimizer): the automatic WeightPenalty is added there and would silently never apply. "
                "Call super() in your override (or use WeightPenalty(automatic=False) and add "
                "self.penalty() to the loss)."
            )

    def _penalty_parameters_of(self, optimizer: Optimizer) -> list[nn.Parameter]:
        # only this optimizer's parameters: with several optimizers each parameter is penalised once
        cache = self.__dict__.setdefault("_penalty_params_by_optimizer", {})
        key = id(optimizer)
        if key not in cache:
            ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
            cache[key] = [p for p in self.penalty_parameters() if id(p) in ids]
        return cache[key]

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """In automatic mode, add the penalty gradient to ``optimizer``'s parameters; log the value.

        Args:
            optimizer: the optimizer about to step.

        Example:
            Lightning calls it before every optimizer step; by hand it shows the gradient it adds:

            >>> import lightning as L
            >>> class Net(PenaltyMixin, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.layer = nn.Linear(2, 1, bias=False)
            ...         self.weight_penalty = WeightPenalty(l2=0.1)
            >>> net = Net()
            >>> with torch.no_grad():
            ...     _ = net.layer.weight.fill_(2.0)
            >>> net.layer.weight.grad = torch.zeros(1, 2)
            >>> net.on_before_optimizer_step(torch.optim.SGD(net.parameters(), lr=0.1))
            >>> net.layer.weight.grad  # + l2 * w
            tensor([[0.2000, 0.2000]])
        """
        super().on_before_optimizer_step(optimizer)
        config = self.weight_penalty
        if config is None or not (config.l1 or config.l2):
            return
        params = self._penalty_parameters_of(optimizer)
        if config.automatic:
            add_penalty_grad_(params, config.l1, config.l2)
        trainer: pl.Trainer | None = getattr(self, "_trainer", None)
        if trainer is not None and is_logging_step(trainer, config.log_every_n_steps):
            with torch.no_grad():
                value = elastic_net_penalty(params, config.l1, config.l2)
            if isinstance(trainer.strategy, FSDPStrategy):  # FSDP1: views of this rank's flat shard only
                value = trainer.strategy.reduce(value, reduce_op="sum")
            log_step_metrics(trainer, {Keys.PENALTY_VALUE: value})
