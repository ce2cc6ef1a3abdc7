"""Fused gradient statistics and clipping rules, in pure PyTorch (no Lightning).

Everything here is tensor-valued and free of host-device synchronisation: norms are computed with one
``torch._foreach_norm`` call per (device, dtype) bucket, per-group totals with on-device ``index_add_``,
and every clipping rule returns its threshold and clip coefficient as tensors. Adaptive rules keep their
state (history, EMA) in small tensors that can be saved with ``state_dict`` and are identical on all ranks
whenever the total norm they are fed is identical (which it is after DDP's all-reduce or a reduced FSDP norm).

Example:
    >>> import torch
    >>> from lightning_reg.gradients.functional import grad_norms, clip_grads_by_norm_
    >>> lin = torch.nn.Linear(3, 2)
    >>> lin(torch.ones(1, 3)).sum().backward()
    >>> stats = grad_norms(list(lin.parameters()))
    >>> total, coef = clip_grads_by_norm_(list(lin.parameters()), max_norm=0.1)
    >>> bool(torch.isclose(total, stats.total))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_reg._shared.names import NameSelector, default_group_name
from lightning_reg._shared.validation import check_int

__all__ = [
    "AutoClipState",
    "GradStats",
    "ParamGrouping",
    "ZClipState",
    "agc_clip_",
    "autoclip_step",
    "check_norm_type",
    "clip_coefficient",
    "clip_grads_by_norm_",
    "clip_grads_by_value_",
    "grad_norms",
    "group_by_module_depth",
    "group_by_param_groups",
    "group_by_patterns",
    "nonfinite_count",
    "per_tensor_norms",
    "reduce_norms",
    "scale_grads_",
    "zclip_step",
]

ReduceFn = Callable[[Tensor], Tensor]

_NORM_TYPE_RULE = "a number > 0, float('inf') or the string 'inf'"


def check_norm_type(norm_type: float | str, name: str = "norm_type") -> float:
    """Return the p of a p-norm as a float: a number ``> 0``, ``float("inf")`` or a string such as ``"inf"``.

    Strings are read with ``float()``, as Lightning's ``grad_norm`` and torch's ``clip_grad_norm_`` read
    them, so ``"inf"`` (the spelling a YAML config or the command line gives) means the max norm.

    Args:
        norm_type: the p of the p-norm.
        name: the argument's name, for the error message.

    Raises:
        TypeError: not a number or a string.
        ValueError: ``<= 0``, NaN, or a string that is not a number.

    Example:
        >>> check_norm_type("inf"), check_norm_type(2)
        (inf, 2.0)
    """
    value: Any = norm_type
    if isinstance(norm_type, str):
        try:
            value = float(norm_type)
        except ValueError:
            raise ValueError(f"`{name}` must be {_NORM_TYPE_RULE}; got {norm_type!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be {_NORM_TYPE_RULE}; got {norm_type!r} of type {type(norm_type).__name__}."
        )
    if math.isnan(value) or value <= 0:
        raise ValueError(f"`{name}` must be {_NORM_TYPE_RULE}; got {norm_type!r}.")
    return float(value)


def _buckets(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.device, t.dtype), []).append(i)
    return out


def _foreach_norm(tensors: list[Tensor], norm_type: float) -> tuple[Tensor, ...]:
    # Low-precision gradients (bf16/fp16) are reduced with float32 accumulation and output; float32 and
    # float64 in their own precision.
    if tensors[0].dtype in (torch.float16, torch.bfloat16):
        return torch._foreach_norm(tensors, norm_type, dtype=torch.float32)
    return torch._foreach_norm(tensors, norm_type)


def _norm_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float64 when any tensor is float64 (wider than float32), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def per_tensor_norms(
    tensors: Sequence[Tensor], norm_type: float | str = 2.0, device: torch.device | None = None
) -> Tensor:
    """Compute the norm of every tensor as one vector (one ``_foreach_norm`` per device/dtype bucket).

    The vector is float32, or float64 when any tensor is float64: norms are accumulated and kept in the
    gradients' precision where it is wider than float32 (two float64 gradients of ``1e23`` have a finite
    total, as in Lightning's float64 ``grad_norm``); bf16/fp16 tensors are reduced with float32
    accumulation.

    Args:
        tensors: the tensors (e.g. gradients).
        norm_type: p of the p-norm (``0`` counts non-zeros, ``inf`` or ``"inf"`` is the max abs).
        device: where the result lives (default: the first tensor's device).

    Example:
        >>> per_tensor_norms([torch.ones(4), torch.ones(9)]).tolist()
        [2.0, 3.0]
        >>> per_tensor_norms([torch.tensor([3.0, -4.0])], "inf").tolist()
        [4.0]
        >>> per_tensor_norms([torch.full((2,), 1e23, dtype=torch.float64)]).dtype
        torch.float64
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float32, device=device)
    norm_type = float(norm_type)
    device = tensors[0].device if device is None else device
    dtype = _norm_dtype(tensors)
    buckets = _buckets(tensors)
    if len(buckets) == 1:
        return torch.stack(_foreach_norm(list(tensors), norm_type)).to(device, dtype)
    out = torch.empty(len(tensors), dtype=dtype, device=device)
    for idx in buckets.values():
        norms = _foreach_norm([tensors[i] for i in idx], norm_type)
        index = torch.tensor(idx, device=device)
        out.index_copy_(0, index, torch.stack(norms).to(device, dtype))
    return out


@dataclass
class GradStats:
    """Gradient statistics of one step, all tensors on one device (no host values).

    Args:
        per_tensor: float32 vector, the ``norm_type`` norm of each gradient (local shard under FSDP).
        total: the total norm over all gradients, as if concatenated (reduced across ranks if a
            ``reduce_fn`` was given).
        group_norms: per-group norms (vector of ``len(group_names)``), or ``None``.
        norm_type: the p of the p-norm.

    Example:
        >>> s = grad_norms([torch.ones(4)])
        >>> float(s.total)
        2.0
    """

    per_tensor: Tensor
    total: Tensor
    group_norms: Tensor | None
    norm_type: float


def grad_norms(
    grads_or_params: Sequence[Tensor],
    norm_type: float | str = 2.0,
    group_ids: Tensor | None = None,
    num_groups: int = 0,
    reduce_fn: ReduceFn | None = None,
) -> GradStats:
    """Per-tensor, per-group and total gradient norms in one fused pass, with no host sync.

    Args:
        grads_or_params: gradient tensors, or parameters (their ``.grad`` is used; parameters without a
            gradient are skipped, so pass gradients when you need ``group_ids`` aligned).
        norm_type: p of the p-norm (``float("inf")`` or ``"inf"`` for the max norm).
        group_ids: int64 tensor, the group index of every gradient (same device as the output), or ``None``;
            the index ``num_groups`` marks an ungrouped gradient (counted in the total only).
        num_groups: number of groups when ``group_ids`` is given.
        reduce_fn: optional sum-reduction across ranks (e.g. FSDP shards). It is applied once, to the vector
            of summed ``|g|^p`` values (group totals and total together); for ``inf`` it must be a max.

    Returns:
        [`GradStats`][lightning_reg.gradients.functional.GradStats].

    Example:
        >>> g = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
        >>> s = grad_norms(g, group_ids=torch.tensor([0, 1]), num_groups=2)
        >>> float(s.total), s.group_norms.tolist()
        (5.0, [3.0, 4.0])
    """
    maybe_grads = [t.grad if isinstance(t, nn.Parameter) else t for t in grads_or_params]
    grads = [g for g in maybe_grads if g is not None]
    norm_type = float(norm_type)
    device = grads[0].device if grads else torch.device("cpu")
    per = per_tensor_norms(grads, norm_type, device)
    total, groups = reduce_norms(per, norm_type, group_ids, num_groups, reduce_fn)
    return GradStats(per, total, groups, norm_type)


def reduce_norms(
    per_tensor: Tensor,
    norm_type: float | str = 2.0,
    group_ids: Tensor | None = None,
    num_groups: int = 0,
    reduce_fn: ReduceFn | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Total and per-group p-norms from per-tensor p-norms (on-device index/sum ops, no host sync).

    Args:
        per_tensor: float32 vector of per-tensor norms (from
            [`per_tensor_norms`][lightning_reg.gradients.functional.per_tensor_norms]).
        norm_type: p of the p-norm.
        group_ids: group index of every entry (``num_groups`` for "ungrouped"), or ``None``.
        num_groups: number of groups.
        reduce_fn: optional cross-rank reduction applied once to the powered sums (sum; max for ``inf``).

    Returns:
        ``(total, group_norms)``; ``group_norms`` is ``None`` without ``group_ids``.

    Example:
        >>> total, groups = reduce_norms(torch.tensor([3.0, 4.0]), 2.0, torch.tensor([0, 0]), 1)
        >>> float(total), groups.tolist()
        (5.0, [5.0])
    """
    norm_type = float(norm_type)
    if group_ids is None and reduce_fn is None:  # fast path: one kernel
        return torch.linalg.vector_norm(per_tensor, norm_type), None
    is_inf = math.isinf(norm_type)
    n = num_groups if group_ids is not None else 0
    powered = per_tensor if is_inf else per_tensor.pow(norm_type)
    vec = per_tensor.new_zeros(n + 2)  # [groups..., ungrouped, total]
    if group_ids is not None:
        if is_inf:
            vec[: n + 1].scatter_reduce_(0, group_ids, powered, "amax")
        else:
            vec[: n + 1].index_add_(0, group_ids, powered)
    if powered.numel():
        vec[n + 1] = powered.amax() if is_inf else powered.sum()
    if reduce_fn is not None:
        vec = reduce_fn(vec)
    if not is_inf:
        vec = vec.pow(1.0 / norm_type)
    return vec[n + 1], (vec[:n] if group_ids is not None else None)


def nonfinite_count(grads: Sequence[Tensor]) -> Tensor:
    """Count the NaN/Inf elements over all gradients, as an int64 tensor (no host sync).

    Args:
        grads: gradient tensors.

    Example:
        >>> int(nonfinite_count([torch.tensor([1.0, float("nan"), float("inf")])]))
        2
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros((), dtype=torch.int64)
    device = grads[0].device
    # x * 0 is 0 for finite x and NaN for NaN/Inf; the 0-"norm" counts the non-zero (NaN) entries.
    zeros = torch._foreach_mul(grads, 0.0)
    counts = per_tensor_norms(zeros, 0.0, device)
    return counts.sum().to(torch.int64)


def clip_coefficient(total_norm: Tensor, max_norm: float | Tensor, eps: float = 1e-6) -> Tensor:
    """``min(1, max_norm / (total_norm + eps))`` as a tensor, the rule of ``torch.nn.utils.clip_grad_norm_``.

    Args:
        total_norm: the total gradient norm (tensor).
        max_norm: the threshold (number or tensor).
        eps: added to the norm to avoid division by zero.

    Example:
        >>> float(clip_coefficient(torch.tensor(4.0), 2.0, eps=0.0))
        0.5
    """
    return (max_norm / (total_norm.float() + eps)).clamp(max=1.0)


def scale_grads_(grads: Sequence[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the scalar tensor ``coef`` (foreach, per device bucket, no sync).

    Args:
        grads: gradient tensors.
        coef: 0-d tensor.

    Example:
        >>> g = [torch.ones(2)]
        >>> scale_grads_(g, torch.tensor(0.5))
        >>> g[0].tolist()
        [0.5, 0.5]
    """
    grads = [g for g in grads if g is not None]
    for idx in _buckets(grads).values():
        group = [grads[i] for i in idx]
        c = coef.to(device=group[0].device, dtype=group[0].dtype)
        torch._foreach_mul_(group, c)


def _grads_of(params: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in params if p.grad is not None]


def clip_grads_by_norm_(
    params: Iterable[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    total_norm: Tensor | None = None,
    reduce_fn: ReduceFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Clip gradients by their total norm like ``torch.nn.utils.clip_grad_norm_``, returning tensors.

    Args:
        params: parameters whose ``.grad`` is clipped in place.
        max_norm: the maximum total norm.
        norm_type: p of the p-norm.
        total_norm: a precomputed total norm (e.g. from
            [`grad_norms`][lightning_reg.gradients.functional.grad_norms]); computed if ``None``.
        reduce_fn: cross-rank reduction for sharded gradients (see
            [`grad_norms`][lightning_reg.gradients.functional.grad_norms]).

    Returns:
        ``(total_norm, clip_coef)``; the post-clip norm is ``total_norm * clip_coef``.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> total, coef = clip_grads_by_norm_([p], 1.0)
        >>> round(float(p.grad.norm()), 4)
        1.0
    """
    grads = _grads_of(params)
    if total_norm is None:
        total_norm = grad_norms(grads, norm_type, reduce_fn=reduce_fn).total
    coef = clip_coefficient(total_norm, max_norm)
    scale_grads_(grads, coef)
    return total_norm, coef


def clip_grads_by_value_(params: Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (element-wise, also on shards).

    Args:
        params: parameters whose ``.grad`` is clamped in place.
        clip_value: the bound.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([-3.0, 0.5])
        >>> clip_grads_by_value_([p], 1.0); p.grad.tolist()
        [-1.0, 0.5]
    """
    grads = _grads_of(params)
    if grads:
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)


def _unit_norm(x: Tensor) -> Tensor:
    if x.ndim <= 1:  # biases, gains and scalars: the whole tensor is one unit (as Brock et al. and timm)
        return torch.linalg.vector_norm(x.float())
    return torch.linalg.vector_norm(x.float(), dim=tuple(range(1, x.ndim)), keepdim=True)


def agc_clip_(params: Iterable[Tensor], clip_factor: float = 0.01, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise, in place.

    For every unit ``i`` (a slice along dim 0, i.e. an output row/filter; 0-d and 1-d tensors are one unit),
    ``G_i`` is rescaled to ``clip_factor * max(||W_i||, eps) / ||G_i||`` when that ratio is below 1. The
    ``eps`` floor keeps zero-initialised weights (biases, last layers) trainable.

    Args:
        params: parameters whose ``.grad`` is clipped; exclude the classifier head yourself (the callback
            does this with ``exclude``).
        clip_factor: the ``lambda`` of the paper.
        eps: floor on the weight norm.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2, 2)); w.grad = torch.full((2, 2), 10.0)
        >>> agc_clip_([w], clip_factor=0.01)
        >>> [round(v, 4) for v in w.grad.norm(dim=1).tolist()]
        [0.0141, 0.0141]
    """
    for p in params:
        g = p.grad
        if g is None:
            continue
        max_norm = _unit_norm(p.detach()).clamp_min(eps).mul_(clip_factor)
        g_norm = _unit_norm(g)
        coef = (max_norm / g_norm.clamp_min(1e-6)).clamp_(max=1.0)
        g.mul_(coef.to(g.dtype))


@dataclass
class AutoClipState:
    """Ring buffer of recent total norms for AutoClip, all on-device.

    Args:
        history: float32 vector of capacity ``history_size``.
        count: int64 0-d tensor, number of norms recorded so far (may exceed the capacity).

    Example:
        >>> s = AutoClipState.create(100)
        >>> s.history.shape
        torch.Size([100])
    """

    history: Tensor
    count: Tensor

    @classmethod
    def create(cls, history_size: int, device: torch.device | str | None = None) -> AutoClipState:
        """Create a fresh, empty state.

        Args:
            history_size: capacity of the ring buffer.
            device: where the tensors live.

        Example:
            >>> int(AutoClipState.create(8).count)
            0
        """
        return cls(
            torch.zeros(history_size, dtype=torch.float32, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
        )


def autoclip_step(state: AutoClipState, total_norm: Tensor, percentile: float = 10.0) -> Tensor:
    """Record ``total_norm`` and return the AutoClip threshold (Seetharaman et al. 2020), no host sync.

    The threshold is the ``percentile``-th percentile (linear interpolation, like ``numpy.percentile``) of
    the recorded norms including the current one. Non-finite norms are not recorded (the threshold is then
    computed from the previous history; if it is empty the threshold is ``inf``).

    Args:
        state: the mutable [`AutoClipState`][lightning_reg.gradients.functional.AutoClipState] (updated in
            place).
        total_norm: this step's total gradient norm.
        percentile: ``p`` in ``[0, 100]``.

    Returns:
        The clipping threshold as a 0-d float32 tensor.

    Example:
        >>> s = AutoClipState.create(10)
        >>> for v in [1.0, 2.0, 3.0]:
        ...     t = autoclip_step(s, torch.tensor(v), percentile=50)
        >>> float(t)
        2.0
    """
    hist = state.history
    cap = hist.numel()
    norm = total_norm.detach().float().to(hist.device)
    finite = torch.isfinite(norm)
    pos = (state.count % cap).reshape(1)
    new_val = torch.where(finite, norm, hist.index_select(0, pos).squeeze(0))
    hist.index_copy_(0, pos, new_val.reshape(1))
    state.count.add_(finite.to(torch.int64))
    n = state.count.clamp(max=cap)
    valid = torch.arange(cap, device=hist.device) < n
    ordered = torch.sort(torch.where(valid, hist, torch.full_like(hist, math.inf))).values
    rank = (percentile / 100.0) * (n - 1).clamp_min(0).to(torch.float32)
    lo = rank.floor().to(torch.int64)
    hi = rank.ceil().to(torch.int64)
    a, b = ordered.index_select(0, lo.reshape(1))[0], ordered.index_select(0, hi.reshape(1))[0]
    frac = rank - lo.to(torch.float32)
    thr = torch.where(hi == lo, a, a + (b - a) * frac)
    return torch.where(n > 0, thr, torch.full_like(thr, math.inf))


@dataclass
class ZClipState:
    """EMA statistics of the total norm for ZClip, all on-device.

    Args:
        mean: EMA of the (clipped) total norm.
        var: EMA of its variance.
        warmup: float32 buffer of the first ``warmup_steps`` norms.
        count: int64, number of finite norms seen.

    Example:
        >>> ZClipState.create(warmup_steps=5).warmup.shape
        torch.Size([5])
    """

    mean: Tensor
    var: Tensor
    warmup: Tensor
    count: Tensor

    @classmethod
    def create(cls, warmup_steps: int = 25, device: torch.device | str | None = None) -> ZClipState:
        """Create a fresh state.

        Args:
            warmup_steps: number of steps whose norms initialise mean and variance (no clipping then).
            device: where the tensors live.

        Example:
            >>> float(ZClipState.create(3).mean)
            0.0
        """
        z = torch.zeros((), dtype=torch.float32, device=device)
        return cls(z.clone(), z.clone(), torch.zeros(warmup_steps, dtype=torch.float32, device=device),
                   torch.zeros((), dtype=torch.int64, device=device))


def zclip_step(
    state: ZClipState, total_norm: Tensor, alpha: float = 0.97, z_thresh: float = 2.5, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """One ZClip step (Kumar et al. 2025, "reciprocal" rule): threshold decision, EMA update, no host sync.

    During warm-up (the first ``warmup_steps`` finite norms) nothing is clipped; at its end ``mean`` and
    ``var`` are the mean and (unbiased) variance of the warm-up norms. Afterwards, with
    ``std = sqrt(var)`` and ``z = (g - mean) / std``: if ``z > z_thresh`` the norm is clipped to
    ``g' = mean + (z_thresh**2 / z) * std``, else ``g' = g``. Then ``mean <- alpha*mean + (1-alpha)*g'`` and
    ``var <- alpha*var + (1-alpha)*(g' - mean)**2`` (with the updated mean, as the reference code). Non-finite
    norms leave the state unchanged and get coefficient 1 (skip them separately).

    Args:
        state: the mutable [`ZClipState`][lightning_reg.gradients.functional.ZClipState].
        total_norm: this step's total norm.
        alpha: EMA decay.
        z_thresh: z-score threshold.
        eps: floor on ``std`` and on the norm in the coefficient.

    Returns:
        ``(target_norm, clip_coef)`` tensors; scale the gradients by ``clip_coef``.

    Example:
        >>> s = ZClipState.create(warmup_steps=2)
        >>> for v in [1.0, 1.2, 10.0]:
        ...     target, coef = zclip_step(s, torch.tensor(v))
        >>> bool(coef < 1)
        True
    """
    g = total_norm.detach().float().to(state.mean.device)
    finite = torch.isfinite(g)
    g_safe = torch.where(finite, g, torch.zeros_like(g))
    w = state.warmup.numel()
    initialized = state.count >= w
    # ZClip decision with the current statistics.
    std = state.var.clamp_min(0).sqrt().clamp_min(eps)
    z = (g_safe - state.mean) / std
    clipped = state.mean + (z_thresh**2 / z.clamp_min(eps)) * std
    do_clip = initialized & finite & (z > z_thresh)
    target = torch.where(do_clip, clipped, g_safe)
    coef = torch.where(do_clip, target / g_safe.clamp_min(eps), torch.ones_like(g)).clamp(max=1.0)
    # EMA update with the clipped norm (after warm-up).
    new_mean = alpha * state.mean + (1 - alpha) * target
    new_var = alpha * state.var + (1 - alpha) * (target - new_mean) ** 2
    upd = initialized & finite
    # Warm-up: record, and initialise at the last warm-up step.
    if w > 0:
        pos = state.count.clamp(max=w - 1).reshape(1)
        rec = ~initialized & finite
        old = state.warmup.index_select(0, pos)
        state.warmup.index_copy_(0, pos, torch.where(rec, g_safe, old.squeeze(0)).reshape(1))
        init_now = rec & (state.count == w - 1)
        w_mean = state.warmup.mean()
        w_var = state.warmup.var() if w > 1 else torch.zeros_like(w_mean)
        new_mean = torch.where(init_now, w_mean, new_mean)
        new_var = torch.where(init_now, w_var, new_var)
        upd = upd | init_now
    state.mean.copy_(torch.where(upd, new_mean, state.mean))
    state.var.copy_(torch.where(upd, new_var, state.var))
    state.count.add_(finite.to(torch.int64))
    return torch.where(finite, target, g), coef


@dataclass
class ParamGrouping:
    """Assignment of parameters to named groups (for per-group norms).

    Args:
        names: group names, in order.
        index: maps ``id(parameter)`` to its group index (parameters absent from it are not grouped
            and only count towards the total).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> group_by_module_depth(m, depth=1).names
        ['0', '1']
    """

    names: list[str]
    index: dict[int, int]

    def empty_groups(self) -> list[str]:
        """Names of the groups that hold no parameter.

        Example:
            >>> group_by_patterns(torch.nn.Linear(2, 2), {"w": "weight", "x": "missing"}).empty_groups()
            ['x']
        """
        used = set(self.index.values())
        return [name for i, name in enumerate(self.names) if i not in used]

    def ids_for(self, params: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
        """Group index of every parameter (``len(names)`` for an ungrouped one), for ``grad_norms``.

        Args:
            params: the parameters, in the order their norms are computed.
            device: where to put the index tensor.

        Example:
            >>> m = torch.nn.Linear(2, 2)
            >>> group_by_patterns(m, {"b": "bias"}).ids_for(list(m.parameters())).tolist()
            [1, 0]
        """
        rest = len(self.names)
        ids = [self.index.get(id(p), rest) for p in params]
        return torch.tensor(ids, dtype=torch.int64, device=device)

    def trainable_groups(self, params: Iterable[Tensor]) -> set[int]:
        """Return the indices of the groups that hold at least one of ``params`` with ``requires_grad=True``.

        A group outside this set is frozen: its gradient is not computed, so it has no norm (rather than a
        norm of 0). Decided on the host from ``requires_grad`` flags, identical on every rank.

        Args:
            params: the parameters to look at (e.g. ``model.parameters()``).

        Example:
            >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
            >>> m[0].requires_grad_(False)
            Linear(in_features=2, out_features=2, bias=True)
            >>> group_by_module_depth(m).trainable_groups(m.parameters())
            {1}
        """
        index = self.index
        return {index[id(p)] for p in params if p.requires_grad and id(p) in index}


def group_by_module_depth(model: nn.Module, depth: int = 1, separator: str = ".") -> ParamGrouping:
    """Group parameters by the module that owns them, cut to ``depth`` levels below the shared prefix.

    A group is a module path, never a single parameter: the path of the module owning each parameter, cut
    to its first ``depth`` levels below the prefix every path shares (a LightningModule that holds its
    model as ``self.net`` has ``net``, which is kept but not counted). So ``depth=1`` groups by the model's
    top-level children (``net.layer1``, ``net.layer2``, ...) and not into one group ``net``, and
    ``depth=2`` gives ``net.layer1.0``, ... and keeps a shallower leaf such as ``net.fc`` whole.

    A group named by a module path holds that module's whole subtree, with one exception named so it
    cannot be misread: when a module owns parameters directly (e.g. a ViT's ``cls_token`` on ``net``)
    while its children form groups of their own, its own parameters form the group ``<path>/own``
    (``net/own``), not ``net``, which would read as the whole network. ``/`` never occurs in a module
    path, so that name cannot clash with a submodule's.

    Args:
        model: the module.
        depth: module levels to keep below the shared prefix (``1``: top-level children). A parameter of
            the root module, with no module path, forms its own group, named by the parameter.
        separator: name separator.

    Returns:
        The grouping, groups in registration order.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 1)))
        >>> group_by_module_depth(m, depth=2).names
        ['0', '1.0']
        >>> wrapper = torch.nn.Module()
        >>> wrapper.net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> group_by_module_depth(wrapper).names
        ['net.0', 'net.1']
        >>> wrapper.net.register_parameter("cls_token", torch.nn.Parameter(torch.zeros(2)))
        >>> group_by_module_depth(wrapper).names
        ['net/own', 'net.0', 'net.1']
    """
    check_int("depth", depth, low=1)
    named = list(model.named_parameters())
    shared = _shared_prefix([name.split(separator)[:-1] for name, _ in named])
    names: list[str] = []
    index: dict[int, int] = {}
    lookup: dict[str, int] = {}
    for name, p in named:
        path = name.split(separator)[:-1]
        key = separator.join(path[: shared + depth]) if path else name
        if key not in lookup:
            lookup[key] = len(names)
            names.append(key)
        index[id(p)] = lookup[key]
    return ParamGrouping([_own_group_name(key, names, separator) for key in names], index)


#: Suffix of a group that holds only the parameters a module owns directly (its children are grouped apart).
_OWN_GROUP_SUFFIX = "/own"


def _own_group_name(key: str, keys: list[str], separator: str) -> str:
    """``key`` itself if it names a whole subtree, else ``key + _OWN_GROUP_SUFFIX``."""
    inner = key + separator
    return key + _OWN_GROUP_SUFFIX if any(other.startswith(inner) for other in keys) else key


def _shared_prefix(paths: list[list[str]]) -> int:
    """How many leading module-path components every parameter shares."""
    if not paths:
        return 0
    n = min(len(path) for path in paths)
    for i in range(n):
        if any(path[i] != paths[0][i] for path in paths):
            return i
    return n


def group_by_param_groups(optimizer: torch.optim.Optimizer) -> ParamGrouping:
    """One group per optimizer param group, named by its ``"name"`` key (else ``group_<i>``).

    Args:
        optimizer: the optimizer.

    Returns:
        The grouping, one group per param group.

    Example:
        >>> p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [p], "name": "decay"}, {"params": [q]}], lr=0.1)
        >>> group_by_param_groups(opt).names
        ['decay', 'group_1']
    """
    names: list[str] = []
    index: dict[int, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        names.append(str(group.get("name", default_group_name(i))))
        for p in group["params"]:
            index.setdefault(id(p), i)
    return ParamGrouping(names, index)


def group_by_patterns(
    model: nn.Module, patterns: Mapping[str, str | Sequence[str]], strip: Callable[[str], str] | None = None
) -> ParamGrouping:
    """Group parameters by the first group whose name selector matches their qualified name.

    Patterns use the library's one selector syntax (``NameSelector``):
    a dotted name (and everything below it), a glob, or ``re:<regex>``.

    Args:
        model: the module.
        patterns: ``{group_name: pattern or [patterns]}``, tried in order; unmatched parameters are not
            grouped (they count towards the total only).
        strip: optional function applied to each parameter name first (e.g. to remove wrapper prefixes).

    Returns:
        The grouping;
        [`ParamGrouping.empty_groups`][lightning_reg.gradients.functional.ParamGrouping.empty_groups] names
        the groups that matched nothing.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> g = group_by_patterns(m, {"norm": "1", "bias": "*.bias"})
        >>> g.names, g.index[id(m[0].bias)], g.index[id(m[1].bias)]
        (['norm', 'bias'], 1, 0)
    """
    selectors = [
        (name, NameSelector([spec] if isinstance(spec, str) else list(spec), name=f"patterns[{name!r}]"))
        for name, spec in patterns.items()
    ]
    index: dict[int, int] = {}
    for pname, p in model.named_parameters():
        pname = strip(pname) if strip is not None else pname
        for gi, (_, selector) in enumerate(selectors):
            if selector.matches(pname):
                index[id(p)] = gi
                break
    return ParamGrouping([name for name, _ in selectors], index)
