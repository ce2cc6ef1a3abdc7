"""EarlyStopping that puts the best weights back, however training ended, on every strategy.

A drop-in subclass of :class:`lightning.pytorch.callbacks.EarlyStopping`: every argument, the
``state_key``, the stop decisions and reasons are Lightning's. On top it snapshots the weights that
produced the best monitored value (see :mod:`lightning_reg.early_stopping.snapshot`) and restores them
at the end
of ``fit`` (``on_train_end``) and when ``fit`` ends with an exception such as ``KeyboardInterrupt``
(``on_exception``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import WarningCache, rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_reg.early_stopping.snapshot import (
    WeightSnapshot,
    agree_on_score,
    is_sharded_module,
    local_snapshot_tensors,
)

__all__ = ["EarlyStopping"]

SnapshotMode = Literal["cpu", "device", "checkpoint"]
_SNAPSHOT_MODES = ("cpu", "device", "checkpoint")


class EarlyStopping(_LightningEarlyStopping):
    r"""Lightning's ``EarlyStopping`` plus restore of the best weights, ``start_from_epoch`` and ``baseline``.

    The arguments up to ``log_rank_zero_only`` are Lightning's, unchanged. The weights snapshotted are
    those the monitored value was computed with: with the check after validation
    (``check_on_train_epoch_end=False``) the snapshot is taken right after validation; with the check at
    the end of the training epoch (Lightning's default when validation runs once per epoch) validation
    has run at the end of that epoch with the same weights, so the snapshot is again of the validated
    weights (if the weights changed between the last validation and the check, a once-only warning says
    so and the weights at the check are kept).

    One deliberate difference from Lightning: the check that reaches ``stopping_threshold`` also records
    that value as ``best_score`` (and snapshots its weights), since they are the best seen; Lightning keeps
    the previous best. With several instances, each restores its own best and the last to run wins.

    Under DDP each rank's monitored value is all-gathered: if all ranks agree (``sync_dist=True``) that
    exact value is used, otherwise their mean, so the best score, ``best_epoch``/``best_step`` and the stop
    decision are identical on every rank.

    Args:
        monitor: quantity to be monitored.
        min_delta: minimum change of the monitored quantity that counts as an improvement.
        patience: number of checks with no improvement after which training stops.
        verbose: log improvement and stop messages.
        mode: ``"min"`` or ``"max"``.
        strict: raise if ``monitor`` is not among the logged metrics.
        check_finite: stop when the monitored value becomes NaN or infinite.
        stopping_threshold: stop once the monitored value reaches this threshold.
        divergence_threshold: stop once the monitored value is worse than this threshold.
        check_on_train_epoch_end: run the check at the end of the training epoch instead of after
            validation (``None``: Lightning's rule).
        log_rank_zero_only: log only on rank 0.
        restore_best_weights: put the best weights back when ``fit`` ends, whatever ended it.
        snapshot: where the best weights live: ``"cpu"`` (host memory, buffers allocated once, pinned with
            non-blocking copies on CUDA), ``"device"`` (next to the model: fastest, costs device memory) or
            ``"checkpoint"`` (no copy: restore from ``best_model_path`` of a ``ModelCheckpoint`` monitoring
            the same metric in the same mode; error at setup if there is none).
        start_from_epoch: epochs before this one are ignored entirely (no counting, no thresholds, no
            snapshots).
        baseline: a value the monitored metric must beat to count as an improvement at all; training
            stops after ``patience`` checks that do not beat it.
        save_weights_in_checkpoint: put the best weights into this callback's state in Lightning
            checkpoints, so a resumed run can still restore a best epoch from before the interruption.
            Ignored (with a warning) for sharded strategies (FSDP, DeepSpeed ZeRO-3), whose callback
            state is saved from rank 0 only.

    Attributes:
        best_score: the best (rank-agreed) monitored value.
        best_epoch: epoch of the best value (``None`` before the first improvement).
        best_step: ``trainer.global_step`` when the best value was seen (``None`` before).
        restored: whether the last ``fit`` ended with the best weights put back.

    Raises:
        ValueError: if ``snapshot`` is unknown, ``start_from_epoch`` is negative or ``baseline`` is
            not finite.
        MisconfigurationException: (at setup) ``snapshot="checkpoint"`` without a matching
            ``ModelCheckpoint``; Lightning's errors for a bad ``mode``.

    Example:
        >>> import lightning as L
        >>> from lightning_reg import EarlyStopping
        >>> es = EarlyStopping("val_loss", patience=3, snapshot="cpu")
        >>> trainer = L.Trainer(callbacks=[es], logger=False, enable_checkpointing=False)
        >>> es.best_epoch is None
        True
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = True,
        snapshot: SnapshotMode = "cpu",
        start_from_epoch: int = 0,
        baseline: float | None = None,
        save_weights_in_checkpoint: bool = True,
    ) -> None:
        # Lightning's class accepts these silently: a non-string monitor never matches a logged key, a
        # negative patience stops at the first check, a negative min_delta turns worse values into
        # "improvements".
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a logged metric's name (a non-empty str); got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"`patience` must be an int >= 0; got {patience!r}")
        bad_delta = isinstance(min_delta, bool) or not isinstance(min_delta, (int, float))
        if bad_delta or not 0 <= min_delta < math.inf:
            raise ValueError(f"`min_delta` must be a finite number >= 0; got {min_delta!r}")
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        if snapshot not in _SNAPSHOT_MODES:
            choices = ", ".join(map(repr, _SNAPSHOT_MODES))
            raise ValueError(f"`snapshot` must be one of {choices}; got {snapshot!r}")
        bad_epoch = not isinstance(start_from_epoch, int) or isinstance(start_from_epoch, bool)
        if bad_epoch or start_from_epoch < 0:
            raise ValueError(f"`start_from_epoch` must be an int >= 0; got {start_from_epoch!r}")
        if baseline is not None and not math.isfinite(baseline):
            raise ValueError(f"`baseline` must be a finite number or None; got {baseline!r}")
        self.restore_best_weights = restore_best_weights
        self.snapshot = snapshot
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self.save_weights_in_checkpoint = save_weights_in_checkpoint
        if baseline is not None:
            self.best_score = torch.tensor(float(baseline))
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.restored = False
        self._weights = WeightSnapshot("device" if snapshot == "device" else "cpu")
        self._loaded_weights: dict[str, Tensor] | None = None
        self._last_val_step: int | None = None
        self._sharded: bool | None = None
        self._checkpoint_callback: ModelCheckpoint | None = None
        self._warnings = WarningCache()

    # ------------------------------------------------------------------ setup and state

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.snapshot != "checkpoint" or not self.restore_best_weights:
            return
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == self.monitor and cb.mode == self.mode:
                if cb.save_top_k != 0:
                    self._checkpoint_callback = cb
                    return
        found = [
            f"ModelCheckpoint(monitor={getattr(cb, 'monitor', None)!r}, mode={getattr(cb, 'mode', None)!r})"
            for cb in trainer.checkpoint_callbacks
        ]
        raise MisconfigurationException(
            "EarlyStopping(snapshot='checkpoint') restores from a ModelCheckpoint with"
            f" monitor={self.monitor!r}, mode={self.mode!r} and save_top_k != 0,"
            f" but the Trainer has {found or 'none'}. Add"
            f" `ModelCheckpoint(monitor={self.monitor!r}, mode={self.mode!r}, save_top_k=1)` or use"
            " snapshot='cpu' or 'device'."
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restored = False

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            best_epoch=self.best_epoch, best_step=self.best_step, start_from_epoch=self.start_from_epoch
        )
        if self.save_weights_in_checkpoint and self.restore_best_weights and self.snapshot != "checkpoint":
            if self._sharded:
                self._warnings.warn(
                    "EarlyStopping: best weights are not saved in checkpoints under a sharded strategy (FSDP,"
                    " DeepSpeed ZeRO-3): Lightning saves callback state from rank 0 only. Use"
                    " snapshot='checkpoint' to restore across a resume."
                )
            elif self._weights.has_value:
                state["best_weights"] = self._weights.state_dict()
            elif self._loaded_weights is not None:
                state["best_weights"] = self._loaded_weights
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = state_dict.get("best_step")
        self._loaded_weights = state_dict.get("best_weights")

    # ------------------------------------------------------------------ hooks

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_check(trainer):
            self._last_val_step = trainer.global_step
        super().on_validation_end(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        try:
            self._restore(trainer)
        except Exception as err:  # never mask the exception that ended training
            rank_zero_warn(f"EarlyStopping: restoring the best weights after {exception!r} failed: {err!r}")

    # ------------------------------------------------------------------ the check

    def _agreed_value(self, trainer: pl.Trainer, current: Tensor) -> Tensor:
        if trainer.world_size <= 1:
            return current
        gathered = trainer.strategy.all_gather(current.detach().reshape(()))
        return agree_on_score(gathered).to(current.device)

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        if trainer.current_epoch < self.start_from_epoch:
            return
        current = self._agreed_value(trainer, logs[self.monitor].squeeze())
        previous_best = self.best_score
        should_stop, reason = self._evaluate_stopping_criteria(current)
        improved = self.best_score is current
        if should_stop and self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            # Lightning stops here without recording the value as best; the weights that reached the
            # threshold are the best ones seen, so record (and snapshot) them.
            improved = bool(self.monitor_op(current - self.min_delta, previous_best.to(current.device)))
        if improved:
            self.best_score = current.detach().clone()
        # all ranks computed the same value, so the same decision; reduce anyway as Lightning does
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)
        if improved:
            self._on_improvement(trainer)

    def _snapshot_module(self, trainer: pl.Trainer) -> nn.Module:
        model = trainer.strategy.model
        if model is None:
            model = trainer.lightning_module
        if self._sharded is None:
            self._sharded = is_sharded_module(model)
        # FSDP1 and DeepSpeed keep sharded storage on their wrappers; everything else: the LightningModule
        return model if self._sharded else trainer.lightning_module

    def _on_improvement(self, trainer: pl.Trainer) -> None:
        self.best_epoch = trainer.current_epoch
        self.best_step = trainer.global_step
        if not self.restore_best_weights or self.snapshot == "checkpoint":
            return
        if self._check_on_train_epoch_end and self._last_val_step not in (None, trainer.global_step):
            self._warnings.warn(
                f"EarlyStopping: the check ran at the end of epoch {trainer.current_epoch} (step"
                f" {trainer.global_step}) but the last validation ran at step {self._last_val_step}; the"
                " snapshot holds the weights at the check. Use check_on_train_epoch_end=False to snapshot"
                " exactly the validated weights."
            )
        self._weights.capture(local_snapshot_tensors(self._snapshot_module(trainer)))
        self._loaded_weights = None

    # ------------------------------------------------------------------ restore

    def _restore(self, trainer: pl.Trainer) -> None:
        if not self.restore_best_weights or self.restored or trainer.lightning_module is None:
            return
        if trainer.fast_dev_run:  # Lightning disables early stopping checks under fast_dev_run
            return
        if self.snapshot == "checkpoint":
            done = self._restore_from_checkpoint(trainer)
        elif self._weights.has_value:
            self._weights.restore(local_snapshot_tensors(self._snapshot_module(trainer)))
            done = True
        elif self._loaded_weights is not None:
            tensors = local_snapshot_tensors(self._snapshot_module(trainer))
            self._weights.load_state_dict(self._loaded_weights, like=tensors)
            self._weights.restore(tensors)
            self._loaded_weights = None
            done = True
        else:
            done = False
        if not done:
            if self.best_epoch is None:
                why = "the monitored metric never improved"
            elif self.snapshot == "checkpoint":
                why = "the ModelCheckpoint has no best_model_path"
            else:
                why = (
                    f"the best epoch {self.best_epoch} precedes a resume from a checkpoint without the"
                    " weights (save_weights_in_checkpoint=False or a sharded strategy)"
                )
            self._warnings.warn(f"EarlyStopping: no best weights to restore: {why}")
            return
        self.restored = True
        rank_zero_info(
            f"EarlyStopping: restored epoch {self.best_epoch}, step {self.best_step},"
            f" {self.monitor}={float(self.best_score):.4f}"
        )

    def _restore_from_checkpoint(self, trainer: pl.Trainer) -> bool:
        cb = self._checkpoint_callback
        if cb is None or not cb.best_model_path:
            return False
        if cb.best_model_score is not None and not torch.equal(
            cb.best_model_score.detach().cpu().reshape(()).to(torch.float64),
            self.best_score.detach().cpu().reshape(()).to(torch.float64),
        ):
            self._warnings.warn(
                f"EarlyStopping: ModelCheckpoint's best {self.monitor}={float(cb.best_model_score):.6g}"
                f" differs from EarlyStopping's best {float(self.best_score):.6g} (min_delta,"
                " start_from_epoch or baseline);"
                f" restoring the checkpoint {cb.best_model_path}."
            )
        checkpoint = trainer.strategy.load_checkpoint(cb.best_model_path)
        trainer.strategy.load_model_state_dict(checkpoint)
        return True
