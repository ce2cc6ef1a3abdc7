"""``BatchMixingMixin``: mix the training batches of a module with a ``BatchMixer``."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor

from lightning_reg.mixing.mixers import BatchMixer, soft_target_cross_entropy

__all__ = ["BatchMixingMixin"]

if TYPE_CHECKING:
    # A mixin put before ``LightningModule`` in the bases: type checkers see its methods on one, so its
    # ``super()`` calls reach the module's hooks; at run time it adds no base.
    _LightningModuleMixin = LightningModule
else:
    _LightningModuleMixin = object

_CKPT_KEY = "lightning_reg.batch_mixer"


class _MixingTrainingStep:
    """A module's ``training_step`` while it has a mixer: mix the batch, then run the class's own step.

    Lightning looks ``training_step`` up on the instance (also behind DDP, FSDP and DeepSpeed wrappers), so
    this instance attribute takes the call and the class's method stays as the user wrote it. The batch
    arrives after every batch hook ran (the module's ``on_after_batch_transfer``, or a DataModule's), so
    mixing never needs to override one of the data hooks Lightning shares between a module and a
    DataModule. An optimizer that evaluates its closure several times for one batch (``LBFGS``) sees the
    same mixed batch each time: the mixer's random stream is rewound to where it stood for that batch.
    """

    def __init__(self, module: BatchMixingMixin) -> None:
        self._start(module)

    def _start(self, module: BatchMixingMixin) -> None:
        self.module = module
        self._batch_key: tuple[Any, int] | None = None  # (weakref to the trainer, its batch index)
        self._stream: dict[str, Any] | None = None  # the mixer's state before that batch was mixed
        self._takes_iterator: bool | None = None

    @property
    def __wrapped__(self) -> Any:
        # the class's step, bound: ``inspect.signature`` and Lightning's hook-signature and override checks
        # read the user's method through it, so passing ``batch_idx`` and the rest is decided as usual
        module = self.module
        return type(module).training_step.__get__(module)

    @property
    def __code__(self) -> CodeType:
        # a user's wrapper around this object (functools.wraps) is unwrapped only once by Lightning's
        # override check, which then compares code objects: answer with the class's step's
        return type(self.module).training_step.__code__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        step = type(module).training_step
        mixer = module.batch_mixer
        trainer = getattr(module, "_trainer", None)
        if args and mixer is not None and trainer is not None and trainer.training:
            if self._takes_iterator is None:  # training_step(dataloader_iter): no batch passes here
                self._takes_iterator = is_param_in_hook_signature(step, "dataloader_iter", explicit=True)
            if not self._takes_iterator:
                args = (self._mix(args[0], mixer, trainer), *args[1:])
        return step(module, *args, **kwargs)

    def _mix(self, batch: Any, mixer: BatchMixer, trainer: Any) -> Any:
        key = (weakref.ref(trainer), trainer.fit_loop.total_batch_idx)
        if (
            self._batch_key is not None
            and self._stream is not None  # set together with _batch_key
            and self._batch_key[0]() is trainer
            and self._batch_key[1] == key[1]
        ):
            mixer.load_state_dict(self._stream)  # the same batch again (a closure re-evaluated): same draws
        else:
            self._batch_key, self._stream = key, mixer.state_dict()
        return self.module.mix_batch(batch, mixer)

    def __getstate__(self) -> dict[str, Any]:
        return {"module": self.module}  # the rewind point refers to a live trainer: not worth keeping

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._start(state["module"])


class BatchMixingMixin(_LightningModuleMixin):
    """LightningModule mixin: mix training batches on the device with ``self.batch_mixer``.

    Put it *before* ``LightningModule`` in the bases (``class Net(BatchMixingMixin, L.LightningModule)``)
    and set ``self.batch_mixer = BatchMixer(...)`` in ``__init__``. During training (never in validation,
    test, predict or the sanity check), ``training_step`` receives ``(x, y, *rest)`` batches as
    ``(mixed x, soft targets, *rest)``, mixed on the device; compute the loss with ``mixing_loss``,
    which also accepts the index targets of validation batches. Override ``mix_batch`` for other batch
    structures. The mixer's random state is saved into and restored from Lightning checkpoints. If your
    module overrides ``on_save_checkpoint`` or ``on_load_checkpoint``, call ``super()`` in it.

    Mixing happens on the way into ``training_step``, after every batch hook: your own
    ``on_after_batch_transfer`` or a ``LightningDataModule``'s runs first and its result is mixed. The
    mixin overrides none of the data hooks a module shares with a DataModule, so Lightning has nothing to
    warn about when you train with one. Callbacks' ``on_train_batch_start`` / ``on_train_batch_end`` get
    the batch before mixing; a ``training_step(dataloader_iter)`` gets its batches unmixed (Lightning moves
    none of them either).

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

        Setting a mixer routes this instance's ``training_step`` through the mixing (an instance attribute
        that calls the class's own ``training_step`` with the mixed batch); setting None removes it. The
        class is never changed, so a module without a mixer trains exactly as written.

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
            self.__dict__.pop("training_step", None)
        elif not isinstance(self.__dict__.get("training_step"), _MixingTrainingStep):
            self.__dict__["training_step"] = _MixingTrainingStep(self)

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
        if hasattr(batch, "_fields"):  # namedtuple: the fields are the arguments
            make_namedtuple: Callable[..., Any] = type(batch)
            return make_namedtuple(x, y, *batch[2:])
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
        super().on_save_checkpoint(checkpoint)
        if self.batch_mixer is not None:
            checkpoint[_CKPT_KEY] = self.batch_mixer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the mixer's random stream.

        Args:
            checkpoint: the checkpoint dict being loaded.

        Example:
            See ``on_save_checkpoint``.
        """
        super().on_load_checkpoint(checkpoint)
        if self.batch_mixer is not None and _CKPT_KEY in checkpoint:
            self.batch_mixer.load_state_dict(checkpoint[_CKPT_KEY])
