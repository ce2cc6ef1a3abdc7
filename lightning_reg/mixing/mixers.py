"""Batch mixing on device: Mixup, CutMix, label smoothing and the matching soft-target loss.

The functional core ([`soft_targets`][lightning_reg.mixing.mixers.soft_targets],
[`mixup`][lightning_reg.mixing.mixers.mixup], [`cutmix_box`][lightning_reg.mixing.mixers.cutmix_box],
[`cutmix`][lightning_reg.mixing.mixers.cutmix],
[`soft_target_cross_entropy`][lightning_reg.mixing.mixers.soft_target_cross_entropy]) is plain PyTorch.
[`BatchMixer`][lightning_reg.mixing.mixers.BatchMixer] decides per batch whether and how
to mix (probability, Mixup/CutMix switch, off after an epoch) from its own seeded random stream, and
[`BatchMixingMixin`][lightning_reg.mixing.mixin.BatchMixingMixin] applies it on the way into
``LightningModule.training_step`` (on the device, after
the batch has been moved there) during training only, saving the random stream in checkpoints.

Why not ``torchvision.transforms.v2.MixUp`` / ``CutMix`` directly? We use the same pairing convention
(each sample is mixed with its predecessor, ``roll(1, 0)``) and the same box rule, and the tests check our
kernels against torchvision's, but torchvision's transforms do not fit the Lightning hook as they are:

* they draw ``lambda`` and the box centre from torch's *global* random generator, so mixing perturbs
  every other consumer of that stream (dropout, samplers) and its state cannot be saved and restored
  on its own: a resumed run would not mix the same way as an uninterrupted one;
* ``MixUp`` only accepts 4-D images / 5-D videos: tabular ``(B, F)`` and sequence ``(B, C, L)`` batches
  are rejected; ``CutMix`` has no 1-D (segment) variant;
* there is no per-batch application probability, no Mixup/CutMix switch probability and no label
  smoothing; wrapping them in ``RandomApply``/``RandomChoice`` would return hard ``(B,)`` labels when
  mixing is skipped and soft ``(B, K)`` labels otherwise, so the loss would see changing target shapes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_reg._shared.validation import check_choice, check_int, check_number

__all__ = [
    "BatchMixer",
    "MixParams",
    "cutmix",
    "cutmix_box",
    "mixup",
    "soft_target_cross_entropy",
    "soft_targets",
]

_REDUCTIONS = ("mean", "sum", "none")


def soft_targets(
    target: Tensor, num_classes: int, *, label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Turn class indices (or probabilities) into smoothed probability targets, on the target's device.

    Index targets ``(B,)`` become ``(1 - eps) * one_hot + eps / K``; probability targets ``(B, K)`` are
    smoothed the same way (``(1 - eps) * p + eps / K``). Built with one ``scatter_`` (no host sync, unlike
    a validating ``one_hot`` on some devices).

    Args:
        target: class indices of shape ``(B,)`` (integer dtype) or probabilities of shape ``(B, K)``.
        num_classes: ``K``, the number of classes.
        label_smoothing: ``eps`` in ``[0, 1)``.
        dtype: floating dtype of the result.

    Returns:
        A ``(B, K)`` tensor of probabilities.

    Example:
        >>> soft_targets(torch.tensor([0, 2]), 3, label_smoothing=0.3)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.1000, 0.8000]])
    """
    check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
    off = label_smoothing / num_classes
    if target.ndim == 1 and not target.dtype.is_floating_point:
        # Checked on the device without a host sync (raises at once on CPU, a device assert on GPU);
        # without it an out-of-range label is a raw scatter index error or silent garbage.
        torch._assert_async(
            ((target >= 0) & (target < num_classes)).all(),
            f"class indices must be in [0, num_classes={num_classes}); a target is out of range: set"
            " num_classes to the number of classes of your data (labels 0 .. K-1).",
        )
        out = torch.full((target.shape[0], num_classes), off, dtype=dtype, device=target.device)
        return out.scatter_(1, target.unsqueeze(1), 1.0 - label_smoothing + off)
    if target.ndim == 2 and target.shape[1] == num_classes:
        out = target.to(dtype=dtype, copy=True)
        if label_smoothing:
            out.mul_(1.0 - label_smoothing).add_(off)
        return out
    raise ValueError(
        f"target of shape {tuple(target.shape)} and dtype {target.dtype} is neither class indices (B,) "
        f"of an integer dtype nor probabilities (B, {num_classes})."
    )


def mixup(x: Tensor, lam: float) -> Tensor:
    """Mix every sample with its predecessor in the batch: ``lam * x + (1 - lam) * x.roll(1, 0)``.

    Works for any shape ``(B, ...)`` and floating dtype; apply the same ``lam`` to
    [`soft_targets`][lightning_reg.mixing.mixers.soft_targets]
    (``mixup(targets, lam)``) to get the matching targets. The pairing is torchvision's: shuffle the data.

    Args:
        x: a floating tensor whose first dimension is the batch.
        lam: the weight of the sample itself, in ``[0, 1]``.

    Returns:
        A new tensor of the same shape.

    Example:
        >>> mixup(torch.tensor([[1.0], [3.0]]), 0.75)
        tensor([[1.5000],
                [2.5000]])
    """
    if not x.dtype.is_floating_point:
        raise TypeError(f"mixup needs a floating tensor, got dtype {x.dtype}; convert images to float first.")
    out = x.roll(1, 0)
    return out.lerp_(x, lam)


def _spatial_dims(x: Tensor) -> int:
    if x.ndim < 3:
        raise ValueError(
            f"CutMix needs (B, C, L) sequences or (B, ..., H, W) images, got shape {tuple(x.shape)}; "
            f"use Mixup (cutmix_alpha=0) for tabular data."
        )
    return 1 if x.ndim == 3 else 2


def cutmix_box(lam: float, size: Sequence[int], center: Sequence[int]) -> tuple[tuple[slice, ...], float]:
    """Compute the CutMix box for a weight ``lam`` centred at ``center``, and the area-corrected weight.

    For ``d`` spatial dimensions each side of the box is ``2 * int(0.5 * (1 - lam) ** (1 / d) * size)``
    long, so its volume is about ``(1 - lam)`` of the whole; it is clipped at the borders, and the weight
    of the sample itself becomes ``1 - box volume / total volume``. For ``d = 2`` this is torchvision's
    ``CutMix`` rule.

    Args:
        lam: sampled mixing weight in ``[0, 1]``.
        size: the spatial size, ``(L,)`` or ``(H, W)``.
        center: the box centre, ``(c,)`` or ``(cy, cx)``, each ``0 <= c < size``.

    Returns:
        ``(slices, lam_adjusted)``: one ``slice`` per spatial dimension, and the corrected weight.

    Example:
        >>> cutmix_box(0.75, (8, 8), (4, 4))
        ((slice(2, 6, None), slice(2, 6, None)), 0.75)
    """
    if len(size) != len(center) or len(size) not in (1, 2):
        raise ValueError(f"size {tuple(size)} and center {tuple(center)} must both have 1 or 2 entries.")
    side = (1.0 - lam) ** (1.0 / len(size))
    slices = []
    area = 1
    for n, c in zip(size, center):
        half = int(0.5 * side * n)
        lo, hi = max(c - half, 0), min(c + half, n)
        slices.append(slice(lo, hi))
        area *= hi - lo
    return tuple(slices), 1.0 - area / math.prod(size)


def cutmix(x: Tensor, box: Sequence[slice]) -> Tensor:
    """Paste the box region of each sample's predecessor (``roll(1, 0)``) into the sample.

    Args:
        x: ``(B, C, L)`` or ``(B, ..., H, W)`` tensor; the box covers the last ``len(box)`` dimensions.
        box: slices from [`cutmix_box`][lightning_reg.mixing.mixers.cutmix_box].

    Returns:
        A new tensor; only the box region is copied from the predecessor.

    Example:
        >>> x = torch.arange(8.0).reshape(2, 1, 4)
        >>> cutmix(x, (slice(1, 3),))
        tensor([[[0., 5., 6., 3.]],
        <BLANKLINE>
                [[4., 1., 2., 7.]]])
    """
    index: tuple[EllipsisType | slice, ...] = (Ellipsis, *box)
    out = x.clone()
    out[index] = x[index].roll(1, 0)
    return out


def soft_target_cross_entropy(
    logits: Tensor, target: Tensor, *, label_smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross entropy against probability targets ``-(target * log_softmax(logits)).sum(-1)``.

    The loss that matches mixed / smoothed targets. Integer class-index targets (e.g. validation batches,
    which are never mixed) fall back to ``F.cross_entropy`` with the same ``label_smoothing``.

    Args:
        logits: ``(B, K)`` unnormalised scores.
        target: ``(B, K)`` probabilities, or ``(B,)`` class indices.
        label_smoothing: only used for index targets (probability targets are already smoothed).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss (a scalar unless ``reduction="none"``).

    Raises:
        ValueError: probability targets with another number of classes than the logits.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> bool(torch.isclose(soft_target_cross_entropy(logits, torch.tensor([[1.0, 0.0]])),
        ...                    F.cross_entropy(logits, torch.tensor([0]))))
        True
        >>> soft_target_cross_entropy(logits, torch.tensor([[0.5, 0.25, 0.25]]))
        Traceback (most recent call last):
        ...
        ValueError: The logits have 2 classes (shape (1, 2)) but the probability targets 3 (shape (1, 3)): ...
    """
    check_choice("reduction", reduction, _REDUCTIONS)
    if not target.dtype.is_floating_point:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
    if logits.shape[-1] != target.shape[-1]:
        raise ValueError(
            f"The logits have {logits.shape[-1]} classes (shape {tuple(logits.shape)}) but the probability "
            f"targets {target.shape[-1]} (shape {tuple(target.shape)}): the targets were built with "
            f"num_classes={target.shape[-1]} (a BatchMixer's, or RegularizedModule(num_classes=...) with a "
            f"preset); set it to the model's number of outputs, {logits.shape[-1]}."
        )
    loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


@dataclass(frozen=True)
class MixParams:
    """What [`BatchMixer`][lightning_reg.mixing.mixers.BatchMixer] did to one batch.

    Args:
        kind: ``"mixup"``, ``"cutmix"`` or ``"none"``.
        lam: weight of each sample itself in its target (after the CutMix area correction); 1.0 for none.
        box: CutMix slices over the spatial dimensions, else ``None``.

    Example:
        >>> MixParams("none", 1.0).kind
        'none'
    """

    kind: str
    lam: float
    box: tuple[slice, ...] | None = None


class BatchMixer:
    """Per-batch Mixup / CutMix / label smoothing with its own resumable random stream.

    For each training batch: with probability ``prob`` it mixes, choosing CutMix with probability
    ``switch_prob`` when both methods are enabled (``alpha > 0``); ``lambda ~ Beta(alpha, alpha)``.
    Targets always come back as ``(B, K)`` probabilities (smoothed by ``label_smoothing``), also for
    batches left unmixed and after ``stop_epoch``, so the loss sees one target format
    ([`soft_target_cross_entropy`][lightning_reg.mixing.mixers.soft_target_cross_entropy]). Decisions come
    from a ``random.Random`` seeded with ``seed``:
    no device tensors are read (no host sync), the same seed gives the same decisions on every rank (DDP
    ranks mix their local batches with the same lambda, as a single device would mix the global batch),
    and ``state_dict`` makes resumed runs mix exactly as uninterrupted ones.

    Args:
        num_classes: number of classes ``K`` for the soft targets.
        mixup_alpha: Beta parameter for Mixup; 0 disables Mixup.
        cutmix_alpha: Beta parameter for CutMix; 0 disables CutMix.
        prob: probability of mixing a batch.
        switch_prob: probability of CutMix instead of Mixup when both are enabled.
        label_smoothing: ``eps`` applied to every training target (also after ``stop_epoch``).
        stop_epoch: mixing is off from this (0-based) epoch on; ``None`` mixes in every epoch.
        seed: seed of the mixing stream; ``None`` draws one from torch's global generator (so
            ``seed_everything`` makes it reproducible).

    Example:
        >>> mixer = BatchMixer(num_classes=3, mixup_alpha=0.4, seed=0)
        >>> x, y = mixer(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
        >>> y.shape, bool(torch.allclose(y.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
        stop_epoch: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.num_classes = check_int("num_classes", num_classes, low=2)
        self.mixup_alpha = check_number("mixup_alpha", mixup_alpha, low=0)
        self.cutmix_alpha = check_number("cutmix_alpha", cutmix_alpha, low=0)
        self.prob = check_number("prob", prob, low=0, high=1)
        self.switch_prob = check_number("switch_prob", switch_prob, low=0, high=1)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
        self.stop_epoch = check_int("stop_epoch", stop_epoch, low=0, none_ok=True)
        check_int("seed", seed, none_ok=True)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), device="cpu"))
        self.seed = seed
        self._rng = random.Random(seed)
        self.last: MixParams = MixParams("none", 1.0)

    def active(self, epoch: int | None = None) -> bool:
        """Whether mixing can happen in ``epoch`` (some alpha > 0, ``prob > 0`` and before ``stop_epoch``).

        Args:
            epoch: the current 0-based epoch; ``None`` ignores ``stop_epoch``.

        Example:
            >>> BatchMixer(3, stop_epoch=2).active(2)
            False
        """
        if self.prob == 0.0 or (self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0):
            return False
        return epoch is None or self.stop_epoch is None or epoch < self.stop_epoch

    def sample(self, x: Tensor, epoch: int | None = None) -> MixParams:
        """Draw the decision for one batch (host-side random numbers only).

        Args:
            x: the input batch (only its shape is read, for the CutMix box).
            epoch: the current 0-based epoch.

        Example:
            >>> BatchMixer(3, mixup_alpha=1.0, seed=0).sample(torch.zeros(2, 4)).kind
            'mixup'
        """
        if not self.active(epoch) or (self.prob < 1.0 and self._rng.random() >= self.prob):
            return MixParams("none", 1.0)
        use_cutmix = self.cutmix_alpha > 0.0 and (
            self.mixup_alpha == 0.0 or self._rng.random() < self.switch_prob
        )
        if not use_cutmix:
            return MixParams("mixup", self._rng.betavariate(self.mixup_alpha, self.mixup_alpha))
        lam = self._rng.betavariate(self.cutmix_alpha, self.cutmix_alpha)
        size = tuple(x.shape[-_spatial_dims(x) :])
        center = [self._rng.randrange(n) for n in size]
        box, lam_adjusted = cutmix_box(lam, size, center)
        return MixParams("cutmix", lam_adjusted, box)

    def apply(self, x: Tensor, target: Tensor, params: MixParams) -> tuple[Tensor, Tensor]:
        """Apply given [`MixParams`][lightning_reg.mixing.mixers.MixParams] to a batch and its targets.

        Args:
            x: input batch ``(B, ...)``.
            target: class indices ``(B,)`` or probabilities ``(B, K)``.
            params: the decision, e.g. from ``sample``.

        Returns:
            ``(mixed inputs, (B, K) soft targets)``.

        Example:
            >>> mixer = BatchMixer(2)
            >>> mixer.apply(torch.tensor([[0.0], [4.0]]), torch.tensor([0, 1]), MixParams("mixup", 0.75))[1]
            tensor([[0.7500, 0.2500],
                    [0.2500, 0.7500]])
        """
        y = soft_targets(target, self.num_classes, label_smoothing=self.label_smoothing)
        if params.kind == "none":
            return x, y
        if params.kind == "mixup":
            return mixup(x, params.lam), mixup(y, params.lam)
        if params.kind == "cutmix" and params.box is not None:
            return cutmix(x, params.box), mixup(y, params.lam)
        raise ValueError(f"MixParams.kind={params.kind!r} is not one of ('none', 'mixup', 'cutmix').")

    def __call__(self, x: Tensor, target: Tensor, epoch: int | None = None) -> tuple[Tensor, Tensor]:
        """Sample a decision for this batch and apply it; the decision is kept in ``last``.

        Args:
            x: input batch ``(B, ...)``, floating point.
            target: class indices ``(B,)`` or probabilities ``(B, K)``.
            epoch: the current 0-based epoch (for ``stop_epoch``).

        Returns:
            ``(mixed inputs, (B, K) soft targets)``.

        Example:
            >>> mixer = BatchMixer(2, mixup_alpha=0.0, label_smoothing=0.2)
            >>> x, y = mixer(torch.ones(1, 3), torch.tensor([1]))
            >>> y
            tensor([[0.1000, 0.9000]])
        """
        if x.shape[0] != target.shape[0]:
            raise ValueError(f"batch sizes differ: inputs {tuple(x.shape)}, targets {tuple(target.shape)}.")
        self.last = self.sample(x, epoch)
        return self.apply(x, target, self.last)

    def state_dict(self) -> dict[str, Any]:
        """Return the random stream's state (plain ints, safe for ``torch.load(weights_only=True)``).

        Example:
            >>> sorted(BatchMixer(3, seed=1).state_dict())
            ['rng', 'seed']
        """
        version, internal, gauss = self._rng.getstate()
        return {"seed": self.seed, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the random stream saved by ``state_dict``.

        Args:
            state: a dict from ``state_dict``.

        Example:
            >>> a, b = BatchMixer(3, seed=1), BatchMixer(3, seed=2)
            >>> b.load_state_dict(a.state_dict())
            >>> a.sample(torch.zeros(2, 3)) == b.sample(torch.zeros(2, 3))
            True
        """
        version, internal, gauss = state["rng"]
        self.seed = state["seed"]
        self._rng.setstate((version, tuple(internal), gauss))
