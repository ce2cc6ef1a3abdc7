"""One run of the finder: build the user's model with a candidate, fit it, measure the weights it returns.

The objective of a trial is the validation metric of the weights the run returns: the candidate's
``EarlyStopping`` restores its best weights at the end of training, and a ``trainer.validate`` pass then
measures those weights (not the last epoch's, and never a test metric). A pruning callback passed in
(``optuna-integration``'s ``PyTorchLightningPruningCallback``) may stop the run: Optuna's ``TrialPruned``
ends it as pruned. The cost of a run is the fraction of the full run's optimizer steps it trained.

Example:
    >>> from lightning_reg import RegularizedModule, get_preset
    >>> from lightning_reg.find.space import Candidate
    >>> build = model_factory(RegularizedModule, {"num_classes": 3})
    >>> build(Candidate(get_preset("strong"))).preset.mixup_prob
    0.3
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from typing_extensions import override

from lightning_reg import GradientClipping, OverfittingMonitor, StochasticDepthScheduler, preset_callbacks
from lightning_reg.find.space import Candidate
from lightning_reg.find.study import RunResult
from lightning_reg.presets import PresetSummary
from lightning_reg.stochastic_depth.layers import BranchEnd

__all__ = ["TrainingSetup", "model_factory", "run_candidate", "split_user_callbacks"]

#: Trainer arguments the finder sets for every run: no logger, checkpoint files, progress bar or summary.
CONTROLLED_TRAINER_ARGS = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

# Callbacks the candidate brings (or that would fight it): a user's own are left out of the trials.
_REPLACED_CALLBACKS = (
    LightningEarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    PresetSummary,
    OverfittingMonitor,
    GradientClipping,
    StochasticDepthScheduler,
)


def split_user_callbacks(callbacks: Sequence[Callback] | Callback | None) -> tuple[list[Callback], list[str]]:
    """Split a user's Trainer callbacks into those the trials keep and the names of those they replace.

    Early stopping, checkpointing, progress bars and the library's regularization callbacks come from the
    candidate (or are off in trials); every other callback is kept.

    Args:
        callbacks: the user's ``Trainer(callbacks=...)``.

    Returns:
        ``(kept callbacks, class names left out)``.

    Example:
        >>> from lightning.pytorch.callbacks import LearningRateMonitor
        >>> kept, dropped = split_user_callbacks([LearningRateMonitor(), ModelCheckpoint()])
        >>> [type(c).__name__ for c in kept], dropped
        (['LearningRateMonitor'], ['ModelCheckpoint'])
    """
    if callbacks is None:
        return [], []
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    kept = [cb for cb in items if not isinstance(cb, _REPLACED_CALLBACKS)]
    dropped = [type(cb).__name__ for cb in items if isinstance(cb, _REPLACED_CALLBACKS)]
    return kept, dropped


def model_factory(
    model: Callable[..., LightningModule], model_kwargs: Mapping[str, Any] | None = None
) -> Callable[[Candidate], LightningModule]:
    """Return ``candidate -> model``: ``model(**model_kwargs, preset=..., weight_decay=None, **model_args)``.

    ``model`` is a LightningModule class (or any callable returning one) that takes ``preset`` and passes it
    to ``RegularizedModule``; ``weight_decay=None`` is passed when it takes ``weight_decay`` too (so the
    preset's value applies). ``model_kwargs`` are deep-copied for every model, so no two runs share a
    module or a stateful argument.

    Args:
        model: the class or factory.
        model_kwargs: its other arguments.

    Returns:
        The factory.

    Raises:
        TypeError: ``model`` is not callable, or takes no ``preset`` argument.
        ValueError: ``model_kwargs`` sets ``preset`` or ``weight_decay``.

    Example:
        >>> from lightning_reg import RegularizedModule, get_preset
        >>> build = model_factory(RegularizedModule, {"num_classes": 3})
        >>> build(Candidate(get_preset("mild"))).preset.name
        'mild'
    """
    if not callable(model):
        raise TypeError(
            f"`model` must be a LightningModule class or a callable returning one; got {model!r}."
        )
    kwargs = dict(model_kwargs or {})
    taken = sorted(k for k in ("preset", "weight_decay") if kwargs.get(k) is not None)
    if taken:
        raise ValueError(
            f"`model_kwargs` sets {taken}: the finder sets them in every run (the candidate's preset, whose "
            "weight decay applies); remove them."
        )
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}  # type: ignore[assignment]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "preset" not in params and not var_kw:
        raise TypeError(
            f"{getattr(model, '__name__', model)!r} takes no `preset` argument: the finder passes each "
            "candidate as `preset=` (a lightning_reg Preset); add `preset: str | Preset | None = None` to "
            "its __init__ and pass it to RegularizedModule."
        )
    takes_weight_decay = "weight_decay" in params or var_kw

    def build(candidate: Candidate) -> LightningModule:
        args = copy.deepcopy(kwargs)
        args["preset"] = candidate.preset
        if takes_weight_decay:
            args["weight_decay"] = None
        args.update(candidate.model_args)
        return model(**args)

    return build


@dataclass(frozen=True)
class TrainingSetup:
    """What every run of the finder shares: how to build the model, the data, the Trainer, the metric.

    Args:
        build: ``candidate -> LightningModule`` (see ``model_factory``).
        datamodule: the user's DataModule (its validation data only is measured).
        trainer_kwargs: the user's Trainer arguments (``max_epochs`` or ``max_steps`` set; no callbacks the
            candidate replaces, see ``split_user_callbacks``); every run trains on one device.
        metric: the validation metric of the objective, as logged by the model (e.g. ``"val_acc"``).
        mode: ``"min"`` or ``"max"`` for ``metric``.
        branch_ends: the model's own residual blocks for drop-path (see ``preset_callbacks``).
        lightning_info: show Lightning's info lines of every run (devices, why a fit stopped); by default
            the ``lightning.pytorch`` logger is held at warnings while the finder's own runs train (and
            restored after each), so a search prints one line per run.

    Example:
        >>> TrainingSetup(build=print, datamodule=None, trainer_kwargs={"max_epochs": 2}).metric
        'val_loss'
    """

    build: Callable[[Candidate], LightningModule]
    datamodule: LightningDataModule | None
    trainer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    metric: str = "val_loss"
    mode: str = "min"
    branch_ends: Mapping[Any, BranchEnd] | None = None
    lightning_info: bool = False


def _missing_metric(metric: str, logged: Mapping[str, Any]) -> ValueError:
    return ValueError(
        f"the model logs no {metric!r} in validation; it logs {sorted(logged)}: pass one of them as the "
        "finder's `metric` (with its `mode`)."
    )


class _Progress(Callback):
    """Measures a run's cost (trained steps over the full run's) and hands it on at every validation."""

    def __init__(self, on_progress: Callable[[float, int], None] | None, metric: str) -> None:
        self.on_progress = on_progress
        self.metric = metric
        self.total = 0.0
        self.cost = 0.0
        self.epochs = 0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = float(trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ValueError(
                f"the finder counts its budget in full runs, so a run must have a known length; got "
                f"{total} optimizer steps: set the Trainer's `max_epochs` or `max_steps`."
            )
        self.total = total

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs = trainer.current_epoch + 1

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            if self.metric not in trainer.callback_metrics:  # say so after one epoch, not after a whole run
                raise _missing_metric(self.metric, trainer.callback_metrics)
            self.epochs = max(self.epochs, trainer.current_epoch + 1)  # validation ends the epoch's training
            self._update(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._update(trainer)

    def _update(self, trainer: Trainer) -> None:
        if self.total:
            self.cost = min(1.0, trainer.global_step / self.total)
            if self.on_progress is not None:
                self.on_progress(self.cost, self.epochs)


@contextlib.contextmanager
def _lightning_info(show: bool) -> Iterator[None]:
    """Hold the ``lightning.pytorch`` logger at warnings for one run (unless ``show``); restore it after."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if not show:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def run_candidate(
    setup: TrainingSetup,
    candidate: Candidate,
    seed: int,
    *,
    callbacks: Sequence[Callback] = (),
    on_progress: Callable[[float, int], None] | None = None,
) -> RunResult:
    """Fit the user's model with ``candidate`` on seed ``seed`` and measure the weights the run returns.

    The callbacks are the user's kept ones, ``preset_callbacks(candidate.preset, monitor=candidate.monitor,
    ...)`` without the overfitting monitor (it changes no weight, and its probe costs time), then
    ``callbacks`` (e.g. Optuna's pruning callback, which ends the run by raising ``TrialPruned``).

    Args:
        setup: the shared training setup.
        candidate: the configuration to run.
        seed: passed to ``seed_everything`` before the model is built.
        callbacks: more callbacks, after the one that measures the cost.
        on_progress: called with ``(cost so far, epochs so far)`` after every validation.

    Returns:
        The ``RunResult``.

    Raises:
        ValueError: the model logs no ``setup.metric`` in validation, or the run has no known length.
    """
    seed_everything(seed, workers=True, verbose=False)
    model = setup.build(candidate)
    run_callbacks: list[Callback] = list(copy.deepcopy(setup.trainer_kwargs.get("callbacks") or []))
    preset_cbs = preset_callbacks(
        candidate.preset,
        monitor=candidate.monitor,
        mode=candidate.mode,
        branch_ends=setup.branch_ends,
        verbose=0,
    )
    for cb in preset_cbs:
        if isinstance(cb, OverfittingMonitor):
            continue
        if isinstance(cb, LightningEarlyStopping) and not candidate.early_stopping:
            continue
        run_callbacks.append(cb)
    progress = _Progress(on_progress, setup.metric)
    run_callbacks.append(progress)  # before a pruning callback: the cost is recorded when it prunes
    run_callbacks.extend(callbacks)
    kwargs = {**setup.trainer_kwargs, **CONTROLLED_TRAINER_ARGS, "callbacks": run_callbacks}
    with _lightning_info(setup.lightning_info):
        trainer = Trainer(**kwargs)
        if trainer.world_size > 1:
            where = f"devices={kwargs.get('devices')!r}, num_nodes={kwargs.get('num_nodes', 1)!r}"
            raise ValueError(
                "the finder trains each run in one process, on one device; this Trainer has world size "
                f"{trainer.world_size} ({where}): set devices=1, and run one finder worker per device to use "
                "several."
            )
        try:
            trainer.fit(model, datamodule=setup.datamodule)
        except optuna.TrialPruned:
            return RunResult(None, progress.cost, progress.epochs, pruned=True)
        # the measurement is no step of the curve: the pruner and the cost stop watching
        watching = (progress, *callbacks)
        # Lightning sets Trainer.callbacks in its callback connector but never declares it on the class
        kept = [cb for cb in trainer.callbacks if not any(cb is w for w in watching)]  # type: ignore[attr-defined]
        trainer.callbacks = kept  # type: ignore[attr-defined]
        results = trainer.validate(model, datamodule=setup.datamodule, verbose=False)
    metrics = results[0] if results else {}
    if setup.metric not in metrics:
        raise _missing_metric(setup.metric, metrics)
    return RunResult(float(metrics[setup.metric]), progress.cost, progress.epochs)
