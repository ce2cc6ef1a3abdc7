"""The one logging rule (Lightning's) and the writers every callback logs through.

A step metric is written when ``(batches_that_stepped + 1) % n == 0`` (or when the trainer is stopping),
with ``n = log_every_n_steps``; ``None`` means the Trainer's interval and ``0`` means never. Callbacks decide
with ``is_logging_step`` and write with ``log_step_metrics``, so every key lands on the same rows as
Lightning's own step metrics and is monitorable by ``EarlyStopping`` and ``ModelCheckpoint``.

The trainer is duck-typed (this module imports no Lightning), but the rule reads Lightning's own counter,
``trainer.fit_loop.epoch_loop._batches_that_stepped``: it is the counter Lightning's logger connector tests,
and no public property exposes it. ``tests/test_conventions.py`` compares our rows with Lightning's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "full_value",
    "is_logging_step",
    "log_epoch_metrics",
    "log_interval",
    "log_step_metrics",
    "logger_step",
]


def log_interval(trainer: Any, log_every_n_steps: int | None) -> int:
    """Return the interval in force: the callback's own, else the Trainer's; ``0`` means never.

    Example:
        >>> class T: log_every_n_steps = 50
        >>> log_interval(T(), None), log_interval(T(), 10), log_interval(T(), 0)
        (50, 10, 0)
    """
    n = trainer.log_every_n_steps if log_every_n_steps is None else log_every_n_steps
    return int(n or 0)


def logger_step(trainer: Any) -> int:
    """Return the step Lightning logs the current batch's step metrics at (batches that stepped).

    Example:
        >>> logger_step(None)
        0
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", 0))


def is_logging_step(trainer: Any, log_every_n_steps: int | None) -> bool:
    """Lightning's rule: ``(batches_that_stepped + 1) % n == 0`` or the trainer is stopping; ``n = 0`` never.

    Evaluated during a training batch (``on_train_batch_start`` up to ``on_train_batch_end``), it selects
    exactly the batches whose step metrics Lightning writes to the loggers (with ``log_every_n_steps=None``
    it equals ``trainer._logger_connector.should_update_logs``).

    Example:
        >>> class Loop: _batches_that_stepped = 49
        >>> class Fit: epoch_loop = Loop()
        >>> class T: log_every_n_steps = 50; fit_loop = Fit(); should_stop = False
        >>> [is_logging_step(T(), n) for n in (None, 0, 7, 25)]
        [True, False, False, True]
    """
    n = log_interval(trainer, log_every_n_steps)
    if n <= 0:
        return False
    return (logger_step(trainer) + 1) % n == 0 or bool(getattr(trainer, "should_stop", False))


def full_value(t: Tensor) -> Tensor:
    """Return the global value of a DTensor (a norm of sharded parameters under FSDP2/ModelParallel).

    ``full_tensor()`` reduces partial placements across ranks; every rank logs, so every rank takes part.
    """
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def log_step_metrics(trainer: Any, metrics: Mapping[str, Tensor | float]) -> None:
    """Write step metrics to every logger and make them monitorable; one host sync per call.

    The values are converted to floats with one ``tolist()`` of the stacked tensors (the loggers need
    host numbers, as Lightning's own ``log_metrics`` does), written with Lightning's step for the current
    batch (so the rows line up with Lightning's own step metrics), and put into
    ``trainer.callback_metrics`` as tensors, where ``EarlyStopping``, ``ModelCheckpoint`` and the progress
    bar find them. Cost (``benchmarks/conventions.py``): see the docs' benchmark page. Call it only on
    logging steps.

    Args:
        trainer: the Trainer.
        metrics: key -> 0-d tensor or number.
    """
    if not metrics:
        return
    keys = list(metrics)
    values = [full_value(v.detach()).reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v)) for v in
              metrics.values()]
    device = values[0].device
    stacked = torch.stack([v.to(device, torch.float32) for v in values])
    callback_metrics = trainer.callback_metrics
    for key, value in zip(keys, stacked.unbind()):
        callback_metrics[key] = value
    if trainer.loggers:  # every rank calls its loggers, as Lightning does (they write on rank 0 only)
        floats = dict(zip(keys, stacked.tolist()))
        trainer.logged_metrics.update(floats)
        step = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(floats, step=step)


def log_epoch_metrics(trainer: Any, metrics: Mapping[str, Tensor | float], with_epoch: bool = True) -> None:
    """Write epoch-level metrics from a hook where ``self.log`` is refused (e.g. ``on_validation_end``).

    The values land on the row Lightning writes the epoch's own metrics to (during validation: the current
    step; after the epoch's last batch, e.g. in ``on_train_epoch_end`` or ``on_train_end``: one step back,
    as Lightning does), with the ``epoch`` column, and in ``trainer.callback_metrics`` (monitorable). One host
    sync per call, only when a logger is attached.

    Args:
        trainer: the Trainer.
        metrics: key -> 0-d tensor or number.
        with_epoch: also write ``epoch`` (``trainer.current_epoch``); pass ``False`` after the fit loop ended
            (``on_train_end``), where the counter is already past the last epoch.
    """
    if not metrics:
        return
    values = {
        k: full_value(v.detach()).reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v))
        for k, v in metrics.items()
    }
    trainer.callback_metrics.update(values)
    if trainer.loggers:  # every rank calls its loggers, as Lightning does (they write on rank 0 only)
        floats = dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))
        trainer.logged_metrics.update(floats)
        step = max(0, logger_step(trainer) - (0 if getattr(trainer, "validating", False) else 1))
        row = {**floats, "epoch": trainer.current_epoch} if with_epoch else floats
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)
