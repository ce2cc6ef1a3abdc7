"""EarlyStopping that puts the best weights back, however training ended, on every strategy.

A drop-in subclass of ``lightning.pytorch.callbacks.EarlyStopping``: every argument, the
``state_key``, the ``state_dict`` keys, the stop decisions and reasons are Lightning's. On top it snapshots
the weights that produced the best monitored value (see ``lightning_reg.early_stopping.snapshot``) and
restores them at the end of ``fit`` (``on_train_end``) and when ``fit`` ends with an exception such as
``KeyboardInterrupt`` (``on_exception``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import WarningCache, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_reg._shared.keys import Keys, maximised_score_name
from lightning_reg._shared.lightning_compat import (
    LIGHTNING_TRACKS_STOPPING_REASON,
    EarlyStoppingReason,
    infer_stopping_reason,
)
from lightning_reg._shared.step_logging import log_epoch_metrics
from lightning_reg._shared.validation import check_bool, check_choice, check_int, check_number, check_str
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.early_stopping._spawn import Published, SpawnResultChannel
from lightning_reg.early_stopping.snapshot import (
    WeightSnapshot,
    agree_on_score,
    is_sharded_module,
    local_snapshot_tensors,
)

__all__ = ["EarlyStopping"]

SnapshotMode = Literal["cpu", "device", "checkpoint"]
_SNAPSHOT_MODES = ("cpu", "device", "checkpoint")

#: Top-level checkpoint entry holding the best weights, keyed by each instance's ``state_key``.
CHECKPOINT_KEY = "lightning_reg.early_stopping.best_weights"
#: Stored instead of the weights when the checkpoint's own ``state_dict`` holds exactly the best weights.
_SAME_AS_MODEL = "same_as_checkpoint_state_dict"
_REASONS = list(EarlyStoppingReason)
#: What a ``ddp_spawn`` worker hands back (see ``_spawn``); ``score_is_double``: the best score's dtype.
_PUBLISHED = (
    "best_epoch", "best_step", "best_score", "stopped_epoch", "wait_count", "stopping_reason", "restored",
    "score_is_double",
)  # fmt: skip


def _published() -> Published[Any]:
    """Return an attribute that takes a spawned worker's results before it is read (see ``_spawn``)."""
    return Published(lambda es: es._take_spawn_results())


class EarlyStopping(_LightningEarlyStopping):
    r"""Lightning's ``EarlyStopping`` plus restore of the best weights, ``start_from_epoch`` and ``baseline``.

    The arguments up to ``log_rank_zero_only`` are Lightning's, with the same meaning; the checks, stop
    decisions, reasons and ``state_dict`` keys are Lightning's (Lightning's own test file of the callback
    passes against this class). The weights snapshotted are those the monitored value was computed with:
    with the check after validation (``check_on_train_epoch_end=False``) the snapshot is taken right after
    validation; with the check at the end of the training epoch (Lightning's default when validation runs
    once per epoch) validation has run at the end of that epoch with the same weights (if the weights
    changed between the last validation and the check, a once-only warning says so and the weights at the
    check are kept).

    Differences from Lightning's class, all deliberate:

    * **A reused instance starts fresh.** Every ``fit`` starts with no best score, no counters and no
      snapshot (as Keras 3 does at ``on_train_begin``), unless the ``fit`` resumes from a checkpoint, which
      restores them. Lightning's class carries the previous fit's best score into the next one.
    * **Stopping threshold.** The check that reaches ``stopping_threshold`` also records that value as
      ``best_score`` (and snapshots its weights), since they are the best seen; Lightning keeps the
      previous best.
    * **Console.** ``verbose`` also takes the library's levels (below); ``True``/``False`` keep Lightning's
      meaning.

    ``baseline`` works as in Keras 3: the best epoch is tracked (and restored) whether or not it beats the
    baseline, but only a value that beats both the baseline and the previous best resets the patience
    counter, so a run that never beats the baseline stops after ``patience`` checks without improvement
    over it and still ends with its best weights.

    Under DDP each rank's monitored value is all-gathered: if all ranks agree (``sync_dist=True``) that
    exact value is used, otherwise their mean, so the best score, ``best_epoch``/``best_step`` and the stop
    decision are identical on every rank. The mean is in no log (each rank logs its own value and the
    loggers show rank 0's), so the first check where the ranks differ warns once, with the values, and the
    restore message marks the best score as the mean over ranks. With several instances, each restores its
    own best and the last to run wins. Under ``ddp_spawn`` (and ``ddp_fork``/``ddp_notebook``) the instance
    in the launching process ends with the workers' ``best_epoch``, ``best_step``, ``best_score``,
    ``stopped_epoch``, ``stopping_reason`` and ``restored`` (and the model with the restored weights, which
    Lightning copies back from rank 0).

    At every check the best epoch so far is logged as ``early_stopping/best_epoch`` and, once restored,
    ``early_stopping/restored_epoch`` (written to the loggers and to ``trainer.callback_metrics``;
    ``lightning_reg.report`` marks the restored epoch from it).

    Args:
        monitor: quantity to be monitored.
        min_delta: minimum change of the monitored quantity that counts as an improvement.
        patience: number of checks with no improvement after which training stops.
        verbose: ``0``/``False``: nothing but warnings (Lightning's ``False``); ``1`` (default): one line at
            fit start and one when the best weights are restored; ``2``/``True``: also Lightning's message
            at every improvement and stop (Lightning's ``True``).
        mode: ``"min"`` or ``"max"``. ``"min"`` (Lightning's default) with a ``monitor`` that names a
            score to maximise (its last component ``acc``, ``f1``, ``auc``, ``iou``, ``precision``, ...:
            ``lightning_reg._shared.keys.MAXIMISED_SCORE_NAMES``) warns once at construction.
        strict: raise if ``monitor`` is not among the logged metrics.
        check_finite: stop when the monitored value becomes NaN or infinite.
        stopping_threshold: stop once the monitored value reaches this threshold.
        divergence_threshold: stop once the monitored value is worse than this threshold.
        check_on_train_epoch_end: run the check at the end of the training epoch instead of after
            validation (``None``: Lightning's rule, decided again at every ``fit``).
        log_rank_zero_only: log only on rank 0.
        restore_best_weights: put the best weights back when ``fit`` ends, whatever ended it.
        snapshot: where the best weights live: ``"cpu"`` (host memory, buffers allocated once, pinned with
            non-blocking copies on CUDA), ``"device"`` (next to the model: fastest, costs device memory) or
            ``"checkpoint"`` (no copy: restore from ``best_model_path`` of a ``ModelCheckpoint`` monitoring
            the same metric in the same mode; error at setup if there is none).
        start_from_epoch: epochs before this one are ignored entirely (no counting, no thresholds, no
            snapshots).
        baseline: a value the monitored metric must beat for an improvement to reset the patience counter
            (see above).
        save_weights_in_checkpoint: make Lightning checkpoints self-sufficient for the restore: a resumed
            run can still restore a best epoch from before the interruption. A checkpoint written at the
            best epoch (e.g. by a ``ModelCheckpoint`` monitoring the same metric) stores only a marker,
            since its own ``state_dict`` holds the best weights; any other checkpoint stores one copy of
            the weights in its own entry, ``lightning_reg.early_stopping.best_weights`` (the cost: the size
            of the weights, about a third of a checkpoint with Adam state). Ignored (with a warning) for
            sharded strategies (FSDP, DeepSpeed ZeRO-3), whose callback state is saved from rank 0 only.

    Attributes:
        best_score: the best (rank-agreed) monitored value.
        best_epoch: epoch of the best value (``None`` before the first improvement).
        best_step: ``trainer.global_step`` when the best value was seen (``None`` before).
        restored: whether the last ``fit`` ended with the best weights put back.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad value (``snapshot``, a negative ``patience``, ``min_delta`` or
            ``start_from_epoch``, a non-finite ``baseline`` or threshold).
        MisconfigurationException: Lightning's error for a bad ``mode``; (at setup)
            ``snapshot="checkpoint"`` without a matching ``ModelCheckpoint``.

    Example:
        >>> import lightning as L
        >>> from lightning_reg import EarlyStopping
        >>> es = EarlyStopping("val_loss", patience=3, snapshot="cpu")
        >>> trainer = L.Trainer(callbacks=[es], logger=False, enable_checkpointing=False)
        >>> es.best_epoch is None
        True
    """

    # Read in the launching process after a spawn-based fit, these hold the workers' results.
    best_epoch: Published[int | None] = _published()
    best_step: Published[int | None] = _published()
    best_score: Published[Tensor] = _published()
    stopped_epoch: Published[int] = _published()
    stopping_reason: Published[EarlyStoppingReason] = _published()
    restored: Published[bool] = _published()

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool | int = 1,
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
        self._channel = SpawnResultChannel(len(_PUBLISHED))
        check_str("monitor", monitor)
        min_delta = check_number("min_delta", min_delta, low=0)
        check_int("patience", patience, low=0)
        verbose = check_verbose(verbose)
        check_bool("strict", strict)
        check_bool("check_finite", check_finite)
        stopping_threshold = check_number("stopping_threshold", stopping_threshold, none_ok=True)
        divergence_threshold = check_number("divergence_threshold", divergence_threshold, none_ok=True)
        if check_on_train_epoch_end is not None:
            check_bool("check_on_train_epoch_end", check_on_train_epoch_end)
        check_bool("log_rank_zero_only", log_rank_zero_only)
        check_bool("restore_best_weights", restore_best_weights)
        check_choice("snapshot", snapshot, _SNAPSHOT_MODES)
        check_int("start_from_epoch", start_from_epoch, low=0)
        baseline = check_number("baseline", baseline, none_ok=True)
        check_bool("save_weights_in_checkpoint", save_weights_in_checkpoint)
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=bool(verbose),  # the level is set below
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.verbose = verbose  # type: ignore[assignment]  # a 0-2 level; Lightning says bool, compares it to 0
        _warn_if_a_score_is_minimised(monitor, self.mode)
        self.restore_best_weights = restore_best_weights
        self.snapshot = snapshot
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self.save_weights_in_checkpoint = save_weights_in_checkpoint
        self._check_on_train_epoch_end_arg = check_on_train_epoch_end
        self._warnings = WarningCache()
        self._start_fresh()

    def _start_fresh(self) -> None:
        """Forget everything a previous ``fit`` learned (a resumed ``fit`` then loads its checkpoint)."""
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message = None
        self.best_score = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self.best_epoch = None
        self.best_step = None
        self.restored = False
        self._check_on_train_epoch_end = self._check_on_train_epoch_end_arg
        self._weights = WeightSnapshot("device" if self.snapshot == "device" else "cpu")
        self._weights_at: tuple[int, int] | None = None  # (global step, batches) when the snapshot was taken
        self._loaded_weights: dict[str, Tensor] | None = None
        self._capture_at_train_start = False
        self._last_val_step: int | None = None
        self._sharded: bool | None = None
        self._checkpoint_callback: ModelCheckpoint | None = None
        self._num_checks = 0
        self._unsynced = False  # the ranks logged different values of `monitor` (warned once)

    # ------------------------------------------------------------------ results from spawned workers

    def _take_spawn_results(self) -> None:
        """Take the results a spawned worker of the last ``fit`` published, once (see ``_spawn``)."""
        channel = self.__dict__.get("_channel")  # absent while Lightning's __init__ sets the attributes
        values = channel.take() if channel is not None else None
        if values is None:
            return
        v = dict(zip(_PUBLISHED, values))
        d = self.__dict__
        d["_best_epoch"] = None if math.isnan(v["best_epoch"]) else int(v["best_epoch"])
        d["_best_step"] = None if math.isnan(v["best_step"]) else int(v["best_step"])
        d["_best_score"] = torch.tensor(
            v["best_score"], dtype=torch.float64 if v["score_is_double"] == 1 else torch.float32
        )
        d["_stopped_epoch"] = int(v["stopped_epoch"])
        self.wait_count = int(v["wait_count"])
        d["_stopping_reason"] = _REASONS[int(v["stopping_reason"])]
        d["_restored"] = bool(v["restored"])

    def _publish(self, trainer: pl.Trainer) -> None:
        """In a worker of a spawn/fork launcher, publish the results for the launching process (rank 0)."""
        if not isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
            return
        if trainer.global_rank != 0:
            self._channel.publish(None)
            return
        score = self.best_score
        results = {
            "best_epoch": math.nan if self.best_epoch is None else self.best_epoch,
            "best_step": math.nan if self.best_step is None else self.best_step,
            "best_score": float(score),
            "stopped_epoch": self.stopped_epoch,
            "wait_count": self.wait_count,
            "stopping_reason": _REASONS.index(self.stopping_reason),
            "restored": float(self.restored),
            "score_is_double": 1.0 if score.dtype == torch.float64 else 0.0,
        }
        self._channel.publish([float(results[k]) for k in _PUBLISHED])

    # ------------------------------------------------------------------ setup and state

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            self._start_fresh()  # before Lightning loads a checkpoint's state into this callback
        super().setup(trainer, pl_module, stage)
        if stage == TrainerFn.FITTING and self.restore_best_weights:
            callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
            swa = [type(cb).__name__ for cb in callbacks if isinstance(cb, StochasticWeightAveraging)]
            if swa:
                rank_zero_warn(
                    f"EarlyStopping(restore_best_weights=True) and {swa[0]} both replace the weights at the "
                    "end of training; the restore runs after SWA's averaging and discards it. Use one of "
                    "them (EarlyStopping(restore_best_weights=False) keeps SWA's average)."
                )
        if stage != TrainerFn.FITTING or self.snapshot != "checkpoint" or not self.restore_best_weights:
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
        where = {
            "cpu": "a copy in CPU memory",
            "device": "a copy in device memory",
            "checkpoint": "the best ModelCheckpoint file",
        }[self.snapshot]
        extra = "" if self.baseline is None else f", baseline {self.baseline:g}"
        restore = f"restores the best weights at the end ({where})"
        if not self.restore_best_weights:
            restore = "does not restore weights"
        say(
            self.verbose,
            1,
            f"EarlyStopping: {self.monitor} ({self.mode}), {self._patience_text()}{extra}; {restore}.",
        )

    def _patience_text(self) -> str:
        return f"patience {self.patience}"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._capture_at_train_start:
            # resumed from a checkpoint written at the best epoch: its weights, now in the model, are the best
            self._capture_at_train_start = False
            self._weights.capture(local_snapshot_tensors(self._snapshot_module(trainer)))
            self._loaded_weights = None

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # Lightning's keys and values; plain values only (no weights)
        state.update(
            best_epoch=self.best_epoch, best_step=self.best_step, start_from_epoch=self.start_from_epoch
        )
        if not LIGHTNING_TRACKS_STOPPING_REASON:  # Lightning >= 2.6 saves these two itself
            reason, message = self.stopping_reason.value, self.stopping_reason_message
            state.update(stopping_reason=reason, stopping_reason_message=message)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if not LIGHTNING_TRACKS_STOPPING_REASON:
            self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
            self.stopping_reason_message = state_dict.get("stopping_reason_message")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = state_dict.get("best_step")
        if "best_weights" in state_dict:  # checkpoints of lightning-reg 0.1 kept the weights here
            self._loaded_weights = state_dict["best_weights"]

    def _saves_weights(self) -> bool:
        return self.save_weights_in_checkpoint and self.restore_best_weights and self.snapshot != "checkpoint"

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._saves_weights():
            return
        if self._sharded:
            self._warnings.warn(
                "EarlyStopping: best weights are not saved in checkpoints under a sharded strategy (FSDP,"
                " DeepSpeed ZeRO-3): Lightning saves callback state from rank 0 only. Use"
                " snapshot='checkpoint' to restore across a resume."
            )
            return
        entry: Any
        if self._weights.has_value:
            fitting = trainer.state.fn == TrainerFn.FITTING
            # not trained since the snapshot: this checkpoint's own state_dict holds the best weights
            unchanged = fitting and self._weights_at == _progress(trainer)
            entry = _SAME_AS_MODEL if unchanged else self._weights.state_dict()
        elif self._loaded_weights is not None:
            entry = self._loaded_weights
        else:
            return
        checkpoint.setdefault(CHECKPOINT_KEY, {})[self.state_key] = entry

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        entry = checkpoint.get(CHECKPOINT_KEY, {}).get(self.state_key)
        if entry is None:
            return
        if isinstance(entry, str):
            if entry != _SAME_AS_MODEL:
                raise ValueError(f"EarlyStopping: unknown best-weights marker {entry!r} in the checkpoint.")
            self._capture_at_train_start = True
        else:
            self._loaded_weights = entry

    # ------------------------------------------------------------------ hooks

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_check(trainer):
            self._last_val_step = trainer.global_step
        super().on_validation_end(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer, after_error=False)
        self._publish(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        try:
            self._restore(trainer, after_error=True)
        except Exception as err:  # never mask the exception that ended training
            rank_zero_warn(f"EarlyStopping: restoring the best weights after {exception!r} failed: {err!r}")
        self._publish(trainer)

    # ------------------------------------------------------------------ the check

    def _agreed_value(self, trainer: pl.Trainer, current: Tensor) -> Tensor:
        if trainer.world_size <= 1:
            return current
        gathered = trainer.strategy.all_gather(current.detach().reshape(())).reshape(-1)
        agreed = agree_on_score(gathered).to(current.device)
        if not self._unsynced and not bool((gathered == gathered[0]).all()):
            self._unsynced = True  # checked until the first disagreement: one host sync per check
            self._warn_unsynced(gathered.tolist(), float(agreed))
        return agreed

    def _warn_unsynced(self, values: list[float], agreed: float) -> None:
        """Once per fit: the ranks logged different values; say which value early stopping uses."""
        shown = ", ".join(f"{v:.6g}" for v in values)
        rank_zero_warn(
            f"EarlyStopping: `{self.monitor}` differs across the {len(values)} ranks ({shown}): it was "
            "logged without `sync_dist=True`, so each rank logs its own value and the loggers show rank 0's "
            f"({values[0]:.6g}). EarlyStopping uses their mean ({agreed:.6g}) on every rank, for the best "
            "score, the stop decision and its messages, so the best score it reports is in no log. Log it "
            f"with `self.log({self.monitor!r}, ..., sync_dist=True)` to make the logged value the one it "
            "uses."
        )

    def _beats(self, value: Tensor, reference: Tensor | float) -> bool:
        reference = torch.as_tensor(reference, dtype=value.dtype, device=value.device)
        return bool(self.monitor_op(value - self.min_delta, reference))

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop and not LIGHTNING_TRACKS_STOPPING_REASON:  # Lightning < 2.6 records no reason
            self.stopping_reason = infer_stopping_reason(self, current)
        return should_stop, reason

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        if fast_dev_run or not self._validate_condition_metric(logs):
            return
        if trainer.current_epoch < self.start_from_epoch:
            return
        self._num_checks += 1
        current = self._agreed_value(trainer, logs[self.monitor].squeeze())
        previous_best = self.best_score
        previous_wait = self.wait_count
        should_stop, reason = self._evaluate_stopping_criteria(current)
        improved = self.best_score is current
        if should_stop and self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            # Lightning stops here without recording the value as best; the weights that reached the
            # threshold are the best ones seen, so record (and snapshot) them.
            improved = self._beats(current, previous_best)
        if improved:
            self.best_score = current.detach().clone()
            if self.baseline is not None and not self._beats(current, self.baseline):
                # Keras 3: a new best that does not beat the baseline does not reset the patience counter
                self.wait_count = previous_wait + 1
        # all ranks computed the same value, so the same decision; reduce anyway as Lightning does
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose >= 2:
            self._log_info(trainer, reason, self.log_rank_zero_only)
        if improved:
            self._on_improvement(trainer)
        if self.best_epoch is not None:
            log_epoch_metrics(trainer, {Keys.BEST_EPOCH: torch.tensor(float(self.best_epoch))})

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
        self._weights_at = _progress(trainer)
        self._loaded_weights = None
        self._capture_at_train_start = False

    # ------------------------------------------------------------------ restore

    def _restore(self, trainer: pl.Trainer, after_error: bool) -> None:
        if not self.restore_best_weights or self.restored or trainer.lightning_module is None:
            return
        # Lightning disables early stopping checks under fast_dev_run
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
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
            if not after_error:  # after an error, that error is the message; anything more misleads
                self._warnings.warn(f"EarlyStopping: no best weights to restore: {self._why_nothing()}.")
            return
        self.restored = True
        if self.best_epoch is not None:
            value = torch.tensor(float(self.best_epoch))
            log_epoch_metrics(trainer, {Keys.RESTORED_EPOCH: value}, with_epoch=False)
        mean = " (the mean over ranks)" if self._unsynced else ""
        say(
            self.verbose,
            1,
            f"EarlyStopping: restored epoch {self.best_epoch}, step {self.best_step},"
            f" {self.monitor}={float(self.best_score):.4f}{mean}",
        )

    def _why_nothing(self) -> str:
        if self._num_checks == 0 and self.best_epoch is None:
            if self.start_from_epoch:
                return (
                    f"no check ran (`{self.monitor}` was never available, or training ended before"
                    f" start_from_epoch={self.start_from_epoch})"
                )
            return f"no check ran (`{self.monitor}` was never available)"
        if self.best_epoch is None:
            return f"none of the {self._num_checks} values of `{self.monitor}` was finite"
        if self.snapshot == "checkpoint":
            return "the ModelCheckpoint has no best_model_path"
        return (
            f"the best epoch {self.best_epoch} precedes a resume from a checkpoint without the weights"
            " (save_weights_in_checkpoint=False, a sharded strategy, or a checkpoint saved without callback"
            " state)"
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


def _warn_if_a_score_is_minimised(monitor: str, mode: str) -> None:
    """Warn when ``monitor`` names a score to maximise (an accuracy) but ``mode`` is ``"min"``.

    A warning, not an error: ``mode="min"`` is Lightning's default, and the class stays a drop-in
    replacement of Lightning's, whose own tests construct it so.
    """
    score = maximised_score_name(monitor)
    if score is None or mode != "min":
        return
    rank_zero_warn(
        f"EarlyStopping(monitor={monitor!r}) runs with mode='min' (the default), but {score!r} names a score "
        "where higher is better: the best epoch, and the weights restored, would be its worst. Pass "
        "mode='max'."
    )


def _progress(trainer: pl.Trainer) -> tuple[int, int]:
    """(optimizer steps, training batches run): equal at two moments means the weights did not change."""
    batches = trainer.fit_loop.epoch_loop.batch_progress.total.ready
    return trainer.global_step, int(batches)
