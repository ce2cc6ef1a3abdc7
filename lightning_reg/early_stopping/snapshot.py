"""Strategy-aware helpers: local weight snapshots (DDP, FSDP, DeepSpeed ZeRO) and rank agreement.

Everything here is plain PyTorch (no Lightning import): the callbacks decide *when* to call it.

* [`local_snapshot_tensors`][lightning_reg.early_stopping.snapshot.local_snapshot_tensors] lists the tensors a
  rank must copy to be able to put its model back
  exactly: parameters and buffers of a plain or DDP module; only the rank's own shard under FSDP
  (``fully_shard``/FSDP2 ``DTensor`` parameters via ``to_local()``; FSDP1 ``FlatParameter`` local shards)
  and DeepSpeed ZeRO-3 (each parameter's ``ds_tensor`` partition). No collective, no full gather.
* [`WeightSnapshot`][lightning_reg.early_stopping.snapshot.WeightSnapshot] holds one copy of those tensors in
  buffers allocated once and reused for every
  later snapshot; copies in and out are single ``torch._foreach_copy_`` calls (pinned CPU memory and
  non-blocking copies when the source lives on CUDA).
* [`agree_on_score`][lightning_reg.early_stopping.snapshot.agree_on_score] turns the per-rank values of a
  metric into one value every rank uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from lightning_reg._shared.torch_compat import DTensor

if TYPE_CHECKING:
    from typing_extensions import TypeIs

__all__ = ["WeightSnapshot", "agree_on_score", "is_sharded_module", "local_snapshot_tensors"]

SnapshotPlacement = Literal["cpu", "device"]


def _fsdp1_modules(module: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return []
    return [m for m in module.modules() if isinstance(m, FullyShardedDataParallel)]


def _is_dtensor(t: Tensor) -> TypeIs[DTensor]:
    return DTensor is not None and isinstance(t, DTensor)


def _local(t: Tensor) -> Tensor:
    """Return the rank-local storage of a parameter or buffer, detached (a view into the model)."""
    if _is_dtensor(t):  # FSDP2 / fully_shard, tensor parallel: this rank's shard
        return t.to_local().detach()
    ds_tensor = getattr(t, "ds_tensor", None)  # DeepSpeed ZeRO-3 partitioned parameter
    if isinstance(ds_tensor, Tensor):
        return ds_tensor.detach()
    return t.detach()


def is_sharded_module(module: nn.Module) -> bool:
    """Whether ranks hold different slices of ``module``'s weights (FSDP1/2, DTensor, DeepSpeed ZeRO-3).

    Args:
        module: the model as the strategy wrapped it.

    Returns:
        ``True`` when at least one parameter is sharded across ranks.

    Example:
        >>> is_sharded_module(torch.nn.Linear(2, 2))
        False
    """
    if _fsdp1_modules(module):
        return True
    return any(
        _is_dtensor(p) or isinstance(getattr(p, "ds_tensor", None), Tensor) for p in module.parameters()
    )


def local_snapshot_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Name -> rank-local tensor for every parameter and buffer a snapshot must hold.

    The returned tensors share storage with the model (writing into them changes the model):

    * plain module or ``DistributedDataParallel`` (unwrapped): every parameter (tied ones once) and buffer
      (e.g. BatchNorm running statistics and ``num_batches_tracked``);
    * FSDP2 (``fully_shard``) and other ``DTensor`` parameters: ``to_local()``, i.e. this rank's shard only;
    * FSDP1 (``FullyShardedDataParallel``, with or without ``use_orig_params``): the local shard of every
      ``FlatParameter`` (``flat_param._local_shard``, the storage FSDP reshards into), plus parameters FSDP
      does not manage and all buffers;
    * DeepSpeed ZeRO-3: each partitioned parameter's ``ds_tensor`` (this rank's partition). ZeRO-1/2 keep
      full parameters on every rank, so they take the plain path.

    Args:
        module: the model as the strategy wrapped it (``DistributedDataParallel`` is unwrapped here).

    Returns:
        An ordered dict from a stable name to a detached tensor.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> sorted(local_snapshot_tensors(net))[:3]
        ['0.bias', '0.weight', '1.bias']
    """
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    out: dict[str, Tensor] = {}
    fsdp1 = _fsdp1_modules(module)
    covered: set[int] = set()
    for i, fsdp_module in enumerate(fsdp1):
        handle = getattr(fsdp_module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if handle is None or flat is None:
            continue
        if getattr(handle, "uses_sharded_strategy", False) and not handle.needs_unshard():
            # A root FSDP1 unit keeps its gathered parameters after a forward without backward (validation)
            # and reuses them at its next unshard (forward, state_dict) without gathering again: writes into
            # the local shard would be ignored. Switch to the shard and free the gathered copy first.
            handle.reshard(True)
        covered.add(id(flat))
        covered.update(id(p) for p in (getattr(flat, "_params", None) or []))
        covered.update(id(p) for p in (getattr(flat, "_shared_params", None) or []))
        shard = getattr(flat, "_local_shard", None)
        out[f"_fsdp_flat_param.{i}"] = (shard if isinstance(shard, Tensor) else flat).detach()
    for name, p in module.named_parameters():
        # original parameters FSDP1 flattened (views into a FlatParameter) are covered by its shard
        if id(p) not in covered and not (fsdp1 and getattr(p, "_fsdp_flattened", False)):
            out[name] = _local(p)
    for name, b in module.named_buffers():
        out[name] = _local(b)
    return out


class WeightSnapshot:
    """One reusable copy of a set of tensors: allocated on the first capture, overwritten in place after.

    Args:
        placement: ``"cpu"`` keeps the copy in host memory (pinned when the source is on CUDA, copies are
            non-blocking); ``"device"`` keeps it next to the source tensors (fastest, costs device memory).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> snap = WeightSnapshot("cpu")
        >>> snap.capture(local_snapshot_tensors(net))
        >>> best = net.weight.detach().clone()
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> snap.restore(local_snapshot_tensors(net))
        >>> torch.equal(net.weight, best)
        True
    """

    def __init__(self, placement: SnapshotPlacement = "cpu") -> None:
        if placement not in ("cpu", "device"):
            raise ValueError(f"`placement` must be one of 'cpu', 'device'; got {placement!r}")
        self.placement = placement
        self.names: list[str] = []
        self.buffers: list[Tensor] = []

    def __eq__(self, other: object) -> bool:
        """Compare placement, names and tensor values (a pickled copy equals its original)."""
        if not isinstance(other, WeightSnapshot):
            return NotImplemented
        return (
            self.placement == other.placement
            and self.names == other.names
            and len(self.buffers) == len(other.buffers)
            and all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(self.buffers, other.buffers))
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable; typeshed declares object.__hash__ a method

    @property
    def has_value(self) -> bool:
        """Whether a capture (or a load) has filled the buffers."""
        return bool(self.buffers)

    @property
    def nbytes(self) -> int:
        """Bytes held by the snapshot buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers)

    def _allocate(self, tensors: Mapping[str, Tensor]) -> None:
        self.names = list(tensors)
        self.buffers = []
        for t in tensors.values():
            if self.placement == "device":
                self.buffers.append(torch.empty_like(t, memory_format=torch.contiguous_format))
            else:
                pin = t.device.type == "cuda" and torch.cuda.is_available()
                self.buffers.append(torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin))

    def _matches(self, tensors: Mapping[str, Tensor]) -> bool:
        if list(tensors) != self.names:
            return False
        return all(b.shape == t.shape and b.dtype == t.dtype for b, t in zip(self.buffers, tensors.values()))

    @torch.no_grad()
    def capture(self, tensors: Mapping[str, Tensor]) -> None:
        """Copy ``tensors`` into the snapshot (allocating only on the first call or if the layout changed).

        Args:
            tensors: name -> tensor, e.g. from
                [`local_snapshot_tensors`][lightning_reg.early_stopping.snapshot.local_snapshot_tensors].
        """
        if not self.buffers or not self._matches(tensors):
            self._allocate(tensors)
        src = list(tensors.values())
        non_blocking = any(t.device.type == "cuda" for t in src) and self.placement == "cpu"
        if src:
            torch._foreach_copy_(self.buffers, src, non_blocking=non_blocking)

    @torch.no_grad()
    def restore(self, tensors: Mapping[str, Tensor]) -> None:
        """Copy the snapshot back into ``tensors`` (in place, so into the model they view).

        Args:
            tensors: name -> tensor with the same names, shapes and dtypes as at capture.

        Raises:
            RuntimeError: if there is nothing to restore or the layout differs from the captured one.
        """
        if not self.buffers:
            raise RuntimeError("WeightSnapshot.restore called before any capture")
        if not self._matches(tensors):
            raise RuntimeError(
                "WeightSnapshot.restore: the model's tensors differ from the captured ones (names, shapes or"
                f" dtypes); captured {len(self.names)} tensors, got {len(tensors)}"
            )
        dst = list(tensors.values())
        non_blocking = any(t.device.type == "cuda" for t in dst) and self.placement == "cpu"
        torch._foreach_copy_(dst, self.buffers, non_blocking=non_blocking)
        if non_blocking:
            torch.cuda.synchronize()

    def state_dict(self) -> dict[str, Tensor]:
        """Name -> snapshot buffer (synchronised, safe to serialise).

        Returns:
            The buffers themselves (no copy).
        """
        if any(b.is_pinned() for b in self.buffers):
            torch.cuda.synchronize()  # finish pending non-blocking device->host copies
        return dict(zip(self.names, self.buffers))

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> None:
        """Fill the snapshot from ``state`` (e.g. a checkpoint), laid out like the model's ``like`` tensors.

        Args:
            state: name -> tensor, as returned by ``state_dict``.
            like: the model's current tensors (from
                [`local_snapshot_tensors`][lightning_reg.early_stopping.snapshot.local_snapshot_tensors]).

        Raises:
            RuntimeError: if names or shapes differ.
        """
        if list(state) != list(like) or any(state[k].shape != like[k].shape for k in like):
            raise RuntimeError(
                "saved best weights do not match the model's tensors (names or shapes differ); was the model"
                " or the strategy changed between save and resume?"
            )
        self._allocate(like)
        torch._foreach_copy_(self.buffers, [state[k] for k in like])


def agree_on_score(values: Tensor) -> Tensor:
    """One score from every rank's value (``values`` has one entry per rank).

    If all ranks report the same value (the metric was logged with ``sync_dist=True`` or is replicated),
    that exact value is kept, bit for bit; otherwise the mean over ranks is used. A non-finite value on
    any rank makes the result non-finite, so every rank sees it.

    Args:
        values: tensor of shape ``(world_size,)`` (or ``(world_size, 1)``), e.g. from ``all_gather``.

    Returns:
        A 0-d tensor, identical on every rank that passes identical ``values``.

    Example:
        >>> agree_on_score(torch.tensor([0.5, 0.5]))
        tensor(0.5000)
        >>> agree_on_score(torch.tensor([0.25, 0.75]))
        tensor(0.5000)
    """
    flat = values.reshape(-1)
    first = flat[0]
    if bool((flat == first).all()):
        return first.clone()
    return flat.float().mean().to(flat.dtype) if flat.is_floating_point() else flat.float().mean()
