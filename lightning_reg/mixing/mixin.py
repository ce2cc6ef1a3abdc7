"""``BatchMixingMixin``: mix the training batches of a module with a :class:`~lightning_reg.BatchMixer`."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from lightning_reg.mixing.core import BatchMixer, soft_target_cross_entropy

__all__ = ["BatchMixingMixin"]

_CKPT_KEY = "lightning_reg.batch_mixer"


def _mix_after_batch_transfer(module: Any, batch: Any, dataloader_idx: int) -> Any:
    """``on_after_batch_transfer`` of a module with a mixer: the class's own hook, then mixing in training."""
    batch = type(module).on_after_batch_transfer(module, batch, dataloader_idx)
    mixer = module.batch_mixer
    trainer = getattr(module, "_trainer", None)
    if mixer is None or trainer is None or not trainer.training:
        return batch
    return module.mix_batch(batch, mixer)


class BatchMixingMixin:
    """LightningModule mixin: mix training batches on the device with ``self.batch_mixer``.

    Put it *before* ``LightningModule`` in the bases (``class Net(BatchMixingMixin, L.LightningModule)``)
    and set ``self.batch_mixer = BatchMixer(...)`` in ``__init__``. During training (never in validation,
    test, predict or the sanity check), ``on_after_batch_transfer`` replaces ``(x, y, *rest)`` batches by
    ``(mixed x, soft targets, *rest)``; compute the loss with :meth:`mixing_loss`, which also accepts the
    index targets of validation batches. Override :meth:`mix_batch` for other batch structures. The
    mixer's random state is saved into and restored from Lightning checkpoints. If your module overrides
    ``on_save_checkpoint`` or ``on_load_checkpoint``, call ``super()`` in it. Your own
    ``on_after_batch_transfer`` (if any) runs first; mixing is applied to its result.

    Example:
        >>> import torch
        >>> import lightning as L
        >>> class Net(BatchMixingMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, 3)
        ...         self.batch_mixer = BatchMixer(num_classes=3, mixup_alpha=0.2, seed=0)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.mixing_loss(self.layer(x), y)
        >>> Net().mixing_loss(torch.zeros(2, 3), torch.tensor([0, 1])).shape
        torch.Size([])
    """

    @property
    def batch_mixer(self) -> BatchMixer | None:
        """The mixer applied to training batches, or None (no mixing).

        Setting a mixer installs this instance's ``on_after_batch_transfer`` hook; setting None removes it.
        The hook lives on the instance, not the class, so a module without a mixer does not override
        ``on_after_batch_transfer`` at all (Lightning would otherwise warn about every ``LightningDataModule``
        it is trained with) and a module that overrides the hook itself gets its batches mixed after its
        own hook ran, with or without ``super()``.

        Example:
            >>> m = BatchMixingMixin()
            >>> m.batch_mixer = BatchMixer(num_classes=2)
            >>> m.batch_mixer.num_classes
            2
        """
        return self.__dict__.get("_batch_mixer")

    @batch_mixer.setter
    def batch_mixer(self, mixer: BatchMixer | None) -> None:
        if mixer is not None and not isinstance(mixer, BatchMixer):
            raise TypeError(f"batch_mixer must be a BatchMixer or None, got {type(mixer).__name__}.")
        self.__dict__["_batch_mixer"] = mixer
        if mixer is None:
            self.__dict__.pop("on_after_batch_transfer", None)
        else:
            # a partial (not a bound method) so the module still pickles and deep-copies with its hook
            self.__dict__["on_after_batch_transfer"] = partial(_mix_after_batch_transfer, self)

    def mix_batch(self, batch: Any, mixer: BatchMixer) -> Any:
        """Mix one training batch; the default handles ``(x, y, *rest)`` tuples and lists.

        Args:
            batch: the batch on the device.
            mixer: ``self.batch_mixer``.

        Returns:
            The batch with ``x`` mixed and ``y`` replaced by ``(B, K)`` soft targets.

        Example:
            >>> import torch
            >>> m = BatchMixingMixin()
            >>> x, y = m.mix_batch((torch.ones(2, 3), torch.tensor([0, 1])), BatchMixer(2, mixup_alpha=0.0))
            >>> y
            tensor([[1., 0.],
                    [0., 1.]])
        """
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"BatchMixingMixin.mix_batch handles (inputs, targets, ...) tuples or lists, got "
                f"{type(batch).__name__}; override mix_batch(batch, mixer) for this batch structure."
            )
        epoch = getattr(self, "current_epoch", None) if getattr(self, "_trainer", None) is not None else None
        x, y = mixer(batch[0], batch[1], epoch=epoch)
        if hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(x, y, *batch[2:])
        return type(batch)((x, y, *batch[2:]))

    def mixing_loss(self, logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Soft-target cross entropy (index targets use the mixer's label smoothing).

        Args:
            logits: ``(B, K)`` scores.
            target: ``(B, K)`` soft targets (training) or ``(B,)`` indices (evaluation).
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.

        Example:
            >>> import torch
            >>> BatchMixingMixin().mixing_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]])).item()
            0.6931471824645996
        """
        eps = self.batch_mixer.label_smoothing if self.batch_mixer is not None else 0.0
        return soft_target_cross_entropy(logits, target, label_smoothing=eps, reduction=reduction)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the mixer's random stream next to the model.

        Args:
            checkpoint: the checkpoint dict being written.

        Example:
            >>> import torch
            >>> import lightning as L
            >>> class Net(BatchMixingMixin, L.LightningModule):
            ...     pass
            >>> a, b = Net(), Net()
            >>> a.batch_mixer, b.batch_mixer = BatchMixer(3, seed=1), BatchMixer(3, seed=2)
            >>> checkpoint = {}
            >>> a.on_save_checkpoint(checkpoint)
            >>> b.on_load_checkpoint(checkpoint)  # b now continues a's random stream
            >>> x = torch.zeros(4, 2)
            >>> a.batch_mixer.sample(x) == b.batch_mixer.sample(x)
            True
        """
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        if self.batch_mixer is not None:
            checkpoint[_CKPT_KEY] = self.batch_mixer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the mixer's random stream.

        Args:
            checkpoint: the checkpoint dict being loaded.

        Example:
            See :meth:`on_save_checkpoint`.
        """
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        if self.batch_mixer is not None and _CKPT_KEY in checkpoint:
            self.batch_mixer.load_state_dict(checkpoint[_CKPT_KEY])
