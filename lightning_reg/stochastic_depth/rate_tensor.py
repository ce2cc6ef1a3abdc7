"""Scheduled rates held in one device tensor, so a compiled model reads them as inputs and never recompiles.

``torch.compile`` specialises a graph on every Python float it reads: a drop-path rate stored as a float
attribute and changed every step by a schedule recompiles the model at every new value, until dynamo's
recompile limit (8) makes it run the block eagerly for the rest of training.
[`ScheduledRates`][lightning_reg.stochastic_depth.rate_tensor.ScheduledRates]
moves the rates of the scheduled modules into one 1-D tensor on the model's device; each module reads a
0-d view of it, and a schedule step is one in-place ``torch.mul(targets, multiplier, out=rates)``: no
host sync, no recompilation, one kernel for all modules.

How each kind of module reads the tensor:

* lightning_reg [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] (and subclasses that keep its
  ``forward``): natively,
  through its ``_rate`` slot.
* ``torchvision.ops.StochasticDepth``, timm's ``DropPath``, ``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
  ``nn.AlphaDropout`` and ``nn.FeatureAlphaDropout`` (exactly these classes, not subclasses, whose
  ``forward`` may differ): their class is swapped, for the duration of the fit, to a subclass whose
  ``forward`` draws the same masks with the rate read from the tensor, and swapped back by
  [`ScheduledRates.release`][lightning_reg.stochastic_depth.rate_tensor.ScheduledRates.release].
  ``isinstance`` checks keep working; the rate attribute (``p`` /
  ``drop_prob``) still reads the current rate as a float.
* any other module (the ``drop_rate_attribute`` protocol, subclasses of the classes above, the
  ``dropout`` of a recurrent layer): its float attribute is written, as before; under ``torch.compile``
  each new rate recompiles that module's graph.

**Off state.** A module whose rate is 0 and stays 0 at the next step (a target of 0, an ``"early"``
schedule after its cutoff, a ``"late"`` one before it) is switched to its plain float path, which returns
the input without drawing. Switching costs one more compiled graph the first time (a cheaper one, with no
random draws), never one per rate; a one-step zero (the first step of a warm-up) keeps the tensor path and
draws a mask at rate 0 so that no second graph is compiled for it.

**Same draws.** The tensor path performs the same operations as the float path (``bernoulli_`` of the
keep probability, ``div_`` by it, ``mul``); with the default float64 tensor the masks and outputs are
bitwise those of the float path on CPU (tested against torchvision, timm and ``torch.nn.functional``;
torch < 2.7 on Intel CPUs draws a float rate from MKL's generator: the same distribution, other masks),
and a compiled model draws bitwise what the eager model draws with the ``"eager"`` and ``"aot_eager"``
backends. Inductor generates its own random numbers unless ``torch._inductor.config.fallback_random =
True``. On CUDA, PyTorch's eager ``nn.Dropout`` uses a fused kernel with its own draws; the scheduled
dropout draws with ``bernoulli_`` instead (the same distribution, other masks).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_reg.stochastic_depth.layers import DropPath, find_drop_rate_modules
    >>> model = nn.Sequential(nn.Linear(4, 4), DropPath(0.0), nn.Dropout(0.0))
    >>> table = ScheduledRates(find_drop_rate_modules(model, include_dropout=True), [0.2, 0.1], "cpu")
    >>> table.apply(0.5, 0.5)
    >>> model[1].p, model[2].p, type(model[2]).__name__
    (0.1, 0.05, '_ScheduledDropout')
    >>> table.release()  # classes back; the caller restores the float rates it wants
    >>> type(model[2]).__name__, model[1]._rate is None
    ('Dropout', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from lightning_reg.stochastic_depth.layers import DropPath, DropRateSite, drop_path

__all__ = ["ScheduledRates"]

_RATE = "_scheduled_rate"  # attribute holding the 0-d rate view (or None when off) on a swapped module
_ALPHA = 1.7580993408473766  # SELU's alpha * scale, as in ATen's alpha dropout


# ------------------------------------------------------------------------------------------------ dropout
def _feature_noise_shape(x: Tensor, batched: bool) -> tuple[int, ...]:
    if batched:
        return tuple(x.shape[:2]) + (1,) * (x.ndim - 2)
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _dropout_tensor_rate(
    x: Tensor, p: Tensor, *, feature: bool, batched: bool, alpha: bool, inplace: bool
) -> Tensor:
    """ATen's ``_dropout_impl`` (CPU) with the rate in a tensor: same draws, same arithmetic."""
    keep = 1.0 - p
    noise = x.new_empty(_feature_noise_shape(x, batched) if feature else x.shape).bernoulli_(keep)
    if alpha:
        a = 1.0 / torch.sqrt((_ALPHA * _ALPHA * p + 1.0) * keep)
        b = noise.add(-1).mul_(_ALPHA * a).add_(_ALPHA * a * p)
        noise.mul_(a)
        return (x.mul_(noise) if inplace else x * noise).add_(b)
    noise.div_(keep.clamp_min(1e-30))
    return x.mul_(noise) if inplace else x * noise


class _ScheduledMixin:
    """Marks a class swapped in by ``ScheduledRates`` (``_scheduled_rate``: 0-d rate view or None)."""

    _unscheduled_class: type[nn.Module]


class _ScheduledDropoutBase(_ScheduledMixin):
    """The ``forward`` of the swapped ``torch.nn`` dropout classes, set by four class attributes.

    ``_drops_channels``: drops whole channels; ``_is_alpha``: alpha dropout (keeps SELU's mean and
    variance); ``_tensor_path_ndims``: the input ranks (inclusive range) the tensor path takes, others go to
    torch's own ``forward`` (which handles, or warns about, them); ``_unbatched_ndim``: the rank of an input
    without a batch dimension, whose channels are dimension 0.
    """

    _drops_channels = False
    _is_alpha = False
    _tensor_path_ndims: tuple[int, int] = (0, 1 << 30)
    _unbatched_ndim = -1
    p: float
    inplace: bool
    training: bool

    def forward(self, input: Tensor) -> Tensor:
        """Dropout with the scheduled rate: the same draws as torch's with the rate read from the tensor."""
        if not self.training:  # eval graphs never read the rate slot
            return input
        rate = getattr(self, _RATE)
        if rate is None and self.p == 0.0:
            return input
        low, high = self._tensor_path_ndims
        if rate is None or not low <= input.ndim <= high:
            return self._unscheduled_class.forward(self, input)  # torch's own dropout (the next base)
        return _dropout_tensor_rate(
            input,
            rate,
            feature=self._drops_channels,
            batched=input.ndim != self._unbatched_ndim,
            alpha=self._is_alpha,
            inplace=self.inplace,
        )


class _ScheduledDropout(_ScheduledDropoutBase, nn.Dropout):
    """``nn.Dropout`` reading its rate from a tensor (swapped in by ``ScheduledRates``)."""

    _unscheduled_class = nn.Dropout


class _ScheduledDropout1d(_ScheduledDropoutBase, nn.Dropout1d):
    """``nn.Dropout1d`` reading its rate from a tensor."""

    _unscheduled_class, _drops_channels, _tensor_path_ndims, _unbatched_ndim = nn.Dropout1d, True, (2, 3), 2


class _ScheduledDropout2d(_ScheduledDropoutBase, nn.Dropout2d):
    """``nn.Dropout2d`` reading its rate from a tensor (torch treats a 3-D input as batched, and warns)."""

    _unscheduled_class, _drops_channels, _tensor_path_ndims = nn.Dropout2d, True, (3, 4)


class _ScheduledDropout3d(_ScheduledDropoutBase, nn.Dropout3d):
    """``nn.Dropout3d`` reading its rate from a tensor."""

    _unscheduled_class, _drops_channels, _tensor_path_ndims, _unbatched_ndim = nn.Dropout3d, True, (4, 5), 4


class _ScheduledAlphaDropout(_ScheduledDropoutBase, nn.AlphaDropout):
    """``nn.AlphaDropout`` reading its rate from a tensor."""

    _unscheduled_class, _is_alpha = nn.AlphaDropout, True


class _ScheduledFeatureAlphaDropout(_ScheduledDropoutBase, nn.FeatureAlphaDropout):
    """``nn.FeatureAlphaDropout`` reading its rate from a tensor."""

    _unscheduled_class, _drops_channels, _is_alpha = nn.FeatureAlphaDropout, True, True
    _tensor_path_ndims = (2, 1 << 30)


class _ScheduledStochasticDepth(StochasticDepth, _ScheduledMixin):
    """``torchvision.ops.StochasticDepth`` reading its rate from a tensor."""

    _unscheduled_class = StochasticDepth

    def forward(self, input: Tensor) -> Tensor:
        """Stochastic depth with the scheduled rate."""
        if not self.training:  # eval graphs never read the rate slot
            return input
        rate = getattr(self, _RATE)
        if rate is None and self.p == 0.0:
            return input
        if rate is None:
            return super().forward(input)
        return drop_path(input, rate, training=True, mode=self.mode)


_SCHEDULED: dict[type[nn.Module], type[nn.Module]] = {StochasticDepth: _ScheduledStochasticDepth}

try:
    from timm.layers import DropPath as _TimmDropPath
except ImportError:  # pragma: no cover - timm is optional
    pass
else:

    class _ScheduledTimmDropPath(_TimmDropPath, _ScheduledMixin):
        """timm's ``DropPath`` reading its rate from a tensor."""

        _unscheduled_class = _TimmDropPath

        def forward(self, x: Tensor) -> Tensor:
            """Drop path with the scheduled rate."""
            if not self.training:  # eval graphs never read the rate slot
                return x
            rate = getattr(self, _RATE)
            if rate is None and self.drop_prob == 0.0:
                return x
            if rate is None:
                return super().forward(x)
            return drop_path(x, rate, training=True, scale_by_keep=self.scale_by_keep)

    _SCHEDULED[_TimmDropPath] = _ScheduledTimmDropPath

_SCHEDULED.update(
    {
        nn.Dropout: _ScheduledDropout,
        nn.Dropout1d: _ScheduledDropout1d,
        nn.Dropout2d: _ScheduledDropout2d,
        nn.Dropout3d: _ScheduledDropout3d,
        nn.AlphaDropout: _ScheduledAlphaDropout,
        nn.FeatureAlphaDropout: _ScheduledFeatureAlphaDropout,
    }
)


# ------------------------------------------------------------------------------------------------ the table
_OURS, _SWAPPED, _ATTRIBUTE = 0, 1, 2


class ScheduledRates:
    """The rates of scheduled modules in one device tensor (see the module docstring for the mechanism).

    Constructing it binds the modules (swapping classes where needed); ``apply`` sets every rate to
    ``target * multiplier``; ``release`` restores the classes and leaves the float rates as they are
    (the caller restores them).

    Args:
        found: the modules to schedule, as
            [`find_drop_rate_modules`][lightning_reg.stochastic_depth.layers.find_drop_rate_modules] returns
            them.
        targets: one target rate per module (the rate at multiplier 1).
        device: where the rate tensor lives: the device the model computes on.
        dtype: the tensor's dtype; default float64 (bitwise the float path's draws), float32 on MPS.

    Example:
        >>> from lightning_reg.stochastic_depth.layers import DropPath, find_drop_rate_modules
        >>> table = ScheduledRates(find_drop_rate_modules(DropPath()), [0.3], "cpu")
        >>> table.apply(1.0, 1.0)
        >>> table.rates.tolist(), table.tensor_bound, table.attribute_bound
        ([0.3], 1, 0)
        >>> table.release()
    """

    def __init__(
        self,
        found: Sequence[DropRateSite],
        targets: Sequence[float],
        device: torch.device | str,
        dtype: torch.dtype | None = None,
    ) -> None:
        if len(found) != len(targets):
            raise ValueError(f"{len(found)} modules but {len(targets)} target rates")
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
        self._found = list(found)
        self._targets_list = [float(t) for t in targets]
        self.targets = torch.tensor(self._targets_list, dtype=dtype, device=device)
        self.rates = torch.zeros(len(found), dtype=dtype, device=device)
        self._views = list(self.rates.unbind()) if len(found) else []
        self._kind: list[int] = []
        self._multipliers: tuple[float, float] | None = None
        self._all_off: bool | None = None
        for f in self._found:
            module = f.module
            if isinstance(module, DropPath) and type(module).forward is DropPath.forward:
                self._kind.append(_OURS)
                continue
            scheduled = _SCHEDULED.get(type(module))
            if scheduled is not None:
                module.__class__ = scheduled
                module.__dict__[_RATE] = None
                self._kind.append(_SWAPPED)
            else:
                self._kind.append(_ATTRIBUTE)
        # per-step write plans, built once
        self._float_plan: list[tuple[dict[str, Any], str, float]] = []
        self._setattr_plan: list[tuple[nn.Module, str, float]] = []
        self._slot_plan: list[tuple[dict[str, Any], str, Tensor, float]] = []
        for f, kind, target, view in zip(self._found, self._kind, self._targets_list, self._views):
            attrs = f.module.__dict__
            if kind == _ATTRIBUTE:
                self._setattr_plan.append((f.module, f.attr, target))
            else:
                self._float_plan.append((attrs, "_p" if kind == _OURS else f.attr, target))
                self._slot_plan.append((attrs, "_rate" if kind == _OURS else _RATE, view, target))

    def set_targets(self, targets: Sequence[float]) -> None:
        """Replace the target rates (e.g. those of a resumed checkpoint) without rebinding the modules.

        Args:
            targets: one target rate per module, in the order of construction.

        Example:
            >>> from lightning_reg.stochastic_depth.layers import DropPath, find_drop_rate_modules
            >>> table = ScheduledRates(find_drop_rate_modules(DropPath()), [0.3], "cpu")
            >>> table.set_targets([0.1])
            >>> table.apply(0.5, 0.5)
            >>> table.rates.tolist()
            [0.05]
            >>> table.release()
        """
        if len(targets) != len(self._found):
            raise ValueError(f"{len(self._found)} modules but {len(targets)} target rates")
        self._targets_list = [float(t) for t in targets]
        self.targets.copy_(torch.tensor(self._targets_list, dtype=self.targets.dtype))
        self._float_plan = [(a, k, t) for (a, k, _), t in zip(self._float_plan, self._tensor_targets())]
        self._slot_plan = [(a, k, v, t) for (a, k, v, _), t in zip(self._slot_plan, self._tensor_targets())]
        attribute = zip(self._setattr_plan, self._attribute_targets())
        self._setattr_plan = [(m, k, t) for (m, k, _), t in attribute]
        self._multipliers = None  # the next apply writes every rate
        self._all_off = None

    def _tensor_targets(self) -> list[float]:
        return [t for k, t in zip(self._kind, self._targets_list) if k != _ATTRIBUTE]

    def _attribute_targets(self) -> list[float]:
        return [t for k, t in zip(self._kind, self._targets_list) if k == _ATTRIBUTE]

    @property
    def tensor_bound(self) -> int:
        """How many modules read their rate from the tensor (no recompilation when it changes)."""
        return sum(k != _ATTRIBUTE for k in self._kind)

    @property
    def attribute_bound(self) -> int:
        """How many modules get float attribute writes (each new rate recompiles them under compile)."""
        return sum(k == _ATTRIBUTE for k in self._kind)

    def attribute_bound_names(self) -> list[str]:
        """Names of the modules scheduled by float attribute writes.

        Example:
            >>> ScheduledRates([], [], "cpu").attribute_bound_names()
            []
        """
        return [f.name for f, k in zip(self._found, self._kind) if k == _ATTRIBUTE]

    @staticmethod
    def original_type(module: nn.Module) -> type[nn.Module]:
        """Return the class ``module`` had before a ``ScheduledRates`` swapped it (else its class).

        Args:
            module: a scheduled or plain module.

        Example:
            >>> from lightning_reg.stochastic_depth.layers import find_drop_rate_modules
            >>> model = nn.Dropout(0.1)
            >>> table = ScheduledRates(find_drop_rate_modules(model, include_dropout=True), [0.1], "cpu")
            >>> type(model).__name__, ScheduledRates.original_type(model).__name__
            ('_ScheduledDropout', 'Dropout')
            >>> table.release()
        """
        return getattr(type(module), "_unscheduled_class", type(module))

    def apply(self, multiplier: float, next_multiplier: float) -> None:
        """Set every rate to ``target * multiplier``; switch modules whose rate stays 0 to the off state.

        Args:
            multiplier: the schedule's multiplier at this step.
            next_multiplier: the multiplier at the next step (a module is off only when its rate is 0 at
                both, so a single zero step does not compile a second graph).
        """
        if self._multipliers == (multiplier, next_multiplier):
            return
        changed = self._multipliers is None or self._multipliers[0] != multiplier
        self._multipliers = (multiplier, next_multiplier)
        if changed:
            if self._views:
                torch.mul(self.targets, multiplier, out=self.rates)
            for attrs, key, target in self._float_plan:  # plain instance attributes: dict writes
                attrs[key] = target * multiplier
            for module, key, target in self._setattr_plan:  # properties and the like: setattr
                setattr(module, key, target * multiplier)
        all_off = multiplier == 0.0 and next_multiplier == 0.0
        if all_off != self._all_off:
            self._all_off = all_off
            for attrs, key, view, target in self._slot_plan:
                attrs[key] = None if (all_off or target == 0.0) else view

    def release(self) -> None:
        """Unbind every module: original classes back, no tensor slot; float rates left as they are.

        Example:
            >>> ScheduledRates([], [], "cpu").release()
        """
        for f, kind in zip(self._found, self._kind):
            module = f.module
            if kind == _OURS:
                module.__dict__["_rate"] = None
            elif kind == _SWAPPED:
                module.__dict__.pop(_RATE, None)
                module.__class__ = self.original_type(module)
        self._kind = [_ATTRIBUTE] * len(self._kind)  # nothing left to release
        self._float_plan, self._slot_plan, self._setattr_plan = [], [], []
        self._multipliers = None

