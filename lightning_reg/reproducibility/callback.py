"""``ReproducibleResume``: every rank's RNG states in checkpoints, restored where the run left off.

Example:
    >>> import lightning as L
    >>> from lightning_reg import ReproducibleResume
    >>> trainer = L.Trainer(callbacks=[ReproducibleResume()], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_reg._shared.lightning_compat import LIGHTNING_EXACT_MID_EPOCH_RESUME
from lightning_reg._shared.validation import check_bool
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.reproducibility.rng import capture_rng_states, restore_rng_states

__all__ = ["ReproducibleResume"]

_VERSION = 1


def _check_cuda_devices(value: Any) -> Literal["auto"] | list[int]:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, (list, tuple)) and all(type(i) is int for i in value):
        if any(i < 0 for i in value):
            raise ValueError(f"`cuda_devices` must hold device indices >= 0; got {value!r}.")
        return list(value)
    raise TypeError(f"`cuda_devices` must be 'auto' or a list of CUDA device indices; got {value!r}.")


class ReproducibleResume(Callback):
    """Make a resumed run draw exactly the random numbers the uninterrupted run draws.

    Lightning's checkpoints hold no random-number state: after a resume, dropout, drop path, Mixup,
    shuffling samplers and ``DataLoader`` worker seeds draw from freshly seeded generators, so the resumed
    run differs from the uninterrupted one (statistically alike, not equal). This callback saves, in every
    checkpoint, each rank's torch CPU state, the state of every CUDA device the rank uses, numpy's
    global state and Python's ``random`` state
    ([`capture_rng_states`][lightning_reg.reproducibility.rng.capture_rng_states];
    ranks are gathered to the process that writes the file, one collective per save), and restores each
    rank's own states when training resumes, at the point that continues the saved sequence:

    * a checkpoint taken at an **epoch boundary** (the usual ``ModelCheckpoint`` at epoch end) is restored
      at ``on_fit_start`` (or, for strategies that load checkpoints after setup, FSDP, ModelParallel and
      DeepSpeed, when Lightning hands over the state, just before the training stage), before Lightning
      creates the next epoch's data iterator, which is where the uninterrupted run draws next (iterator
      seed, shuffling); the sanity check in between runs inside Lightning's ``isolate_rng`` and does not
      disturb it;
    * a **mid-epoch** checkpoint (``every_n_train_steps``, a validation in the middle of an epoch) is
      restored at ``on_train_start``, after the resumed run has rebuilt its iterator (the uninterrupted run
      had drawn for it before the save). For the data to continue too, the loader must be stateful
      (``state_dict``/``load_state_dict``, which Lightning saves); Lightning warns otherwise.

    With it, a run stopped and resumed ends bitwise equal to the uninterrupted run, with every stochastic
    regularizer on and ``seed_everything`` called once, on one process and under DDP, provided the
    operations are deterministic (``Trainer(deterministic=True)`` on GPU), the world size is unchanged and
    the hooks between the save and the restore point draw nothing (``on_train_epoch_start`` of an epoch
    boundary, dataloader hooks). A checkpoint without RNG states (saved without this callback) resumes with
    a warning; a different world size resumes with a warning and the generators as seeded.

    It is off unless added: restoring overrides the seed a user sets before resuming (reseeding to leave a
    bad region is common), and each save then runs a collective, which hangs if a user saves on one rank
    only. From LightningCLI: ``trainer.callbacks: [{class_path: lightning_reg.ReproducibleResume}]``.

    Args:
        cuda_devices: ``"auto"`` (the strategy's root device and the devices the model's parameters are on)
            or a list of CUDA device indices whose generators to save.
        numpy: save and restore numpy's global generator.
        python: save and restore Python's ``random``.
        verbose: 0 quiet, 1 one line at fit start (what is saved, or what is restored), 2 the same.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a negative device index. (A second instance on a Trainer is refused by Lightning, as
            two stateful callbacks with one ``state_key``.)

    Example:
        >>> cb = ReproducibleResume(cuda_devices=[0], numpy=False)
        >>> cb.state_key
        'ReproducibleResume'
    """

    def __init__(
        self,
        cuda_devices: Literal["auto"] | list[int] = "auto",
        numpy: bool = True,
        python: bool = True,
        verbose: int | bool = 1,
    ) -> None:
        super().__init__()
        self.cuda_devices = _check_cuda_devices(cuda_devices)
        self.numpy = check_bool("numpy", numpy)
        self.python = check_bool("python", python)
        self.verbose = check_verbose(verbose)
        self._loaded: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None
        self._fit_started = False
        self._announced = False
        self.restored_at: str | None = None  # "on_fit_start" / "on_train_start" after a restore

    # ------------------------------------------------------------------ hooks
    def _cuda(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Sequence[torch.device | int]:
        if not torch.cuda.is_available():
            return []
        if self.cuda_devices != "auto":
            return list(self.cuda_devices)
        devices = {trainer.strategy.root_device, *(p.device for p in pl_module.parameters())}
        return sorted((d for d in devices if d.type == "cuda"), key=lambda d: d.index or 0)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        local = capture_rng_states(self._cuda(trainer, pl_module), numpy=self.numpy, python=self.python)
        world = trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, (trainer.global_rank, local))
            ranks = [states for _, states in sorted(gathered, key=lambda item: item[0])]
        else:
            ranks = [local]
        loop = trainer.fit_loop.epoch_loop
        mid_epoch = bool(trainer.state.fn == "fit" and not loop.batch_progress.is_last_batch)
        checkpoint.setdefault("callbacks", {})[self.state_key] = {
            "version": _VERSION,
            "world_size": world,
            "mid_epoch": mid_epoch,
            "ranks": ranks,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}  # written by on_save_checkpoint, which can gather the ranks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._fit_started = False

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        if self._fit_started and self._trainer is not None:
            # strategies that restore after setup (FSDP, ModelParallel, DeepSpeed) load callback states after
            # on_fit_start, right before the training stage starts: apply them now
            self._apply(self._trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = True
        self._pending = None
        self.restored_at = None
        self._announced = False
        if self._loaded is not None:
            self._apply(trainer)

    def _apply(self, trainer: pl.Trainer) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is None or "ranks" not in loaded:
            return
        self._announced = True
        if loaded.get("world_size") != trainer.world_size or len(loaded["ranks"]) != trainer.world_size:
            rank_zero_warn(
                f"ReproducibleResume: the checkpoint holds the RNG states of {len(loaded['ranks'])} ranks and"
                f" this run has {trainer.world_size}; they cannot be matched, the generators stay as seeded."
            )
            return
        states = loaded["ranks"][trainer.global_rank]
        mid_epoch = bool(loaded.get("mid_epoch"))
        say(
            self.verbose,
            1,
            f"ReproducibleResume: restoring the RNG states of {trainer.world_size} rank(s) saved"
            f" {'mid-epoch (at train start)' if mid_epoch else 'at an epoch boundary (at fit start)'}.",
        )
        if mid_epoch:
            if not LIGHTNING_EXACT_MID_EPOCH_RESUME:
                rank_zero_warn(
                    "ReproducibleResume: the checkpoint was saved mid-epoch and Lightning < 2.5 does not"
                    " continue such a checkpoint exactly where it was saved, so the resumed run will not be"
                    " bitwise the uninterrupted one even with its RNG states restored. Upgrade to"
                    " lightning>=2.5, or resume from end-of-epoch checkpoints (exact on every release)."
                )
            self._pending = states
        else:
            restore_rng_states(states)
            self.restored_at = "on_fit_start"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
            self.restored_at = "on_train_start"
        if self._announced:
            return
        self._announced = True
        if trainer.ckpt_path is not None:
            rank_zero_warn(
                "ReproducibleResume: the checkpoint holds no RNG states (it was saved without this"
                " callback); the resumed run draws from the generators as seeded, not as they were."
            )
        say(self.verbose, 1, "ReproducibleResume: every rank's RNG states are saved in checkpoints.")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None
        self._fit_started = False
