"""OverfittingMonitor: pair train and validation metrics; say clearly, per pair, when the model memorizes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader
from torchmetrics import Metric
from typing_extensions import override

from lightning_reg._shared.keys import Keys, maximised_score_name
from lightning_reg._shared.validation import check_bool, check_callable, check_int, check_str
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.overfitting._wording import AlertWording
from lightning_reg.overfitting.criteria import CheckReport, OverfittingCriteria
from lightning_reg.overfitting.probe import EvalModeProbe

__all__ = ["OverfittingMonitor"]

_ACTIONS = ("warn", "stop")
#: What the alert proposes to regularize more when no ``hint`` is given.
_DEFAULT_HINT = (
    "Try the 'mild' preset: RegularizedModule(preset='mild') and preset_callbacks('mild'); or let the "
    "regularization finder choose on your validation data: lightning_reg.find.find_regularization "
    "(python -m lightning_reg.find; extra [find])."
)


def _value_dtype(device: torch.device) -> torch.dtype:
    """Float64 for the few per-check values, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _parse_pairs(pairs: Any) -> dict[str, tuple[str, str, str]]:
    """Validate ``{name: (train_key, val_key[, mode])}``; return ``{name: (train_key, val_key, mode)}``.

    A pair without a mode is ``"min"``; one whose key names a score to maximise (an accuracy) must say its
    mode, since ``"min"`` would call every improvement of it a deterioration.
    """
    if not isinstance(pairs, Mapping) or not pairs:
        raise ValueError(
            f"`pairs` must be a non-empty dict {{name: (train_key, val_key[, mode])}}; got {pairs!r}."
        )
    out: dict[str, tuple[str, str, str]] = {}
    for name, spec in pairs.items():
        if isinstance(spec, str) or not isinstance(spec, Sequence):
            raise TypeError(
                f"Pair {name!r} must be (train_key, val_key) or (train_key, val_key, mode); got {spec!r}."
            )
        spec = tuple(spec)
        if len(spec) not in (2, 3) or not all(isinstance(s, str) for s in spec):
            raise ValueError(
                f"Pair {name!r} must be (train_key, val_key) or (train_key, val_key, mode); got {spec!r}."
            )
        if len(spec) == 2:
            score = maximised_score_name(spec[1]) or maximised_score_name(spec[0])
            if score is not None:
                raise ValueError(
                    f"Pair {name!r} {spec!r} has no mode, so it would be 'min' (lower is better), but "
                    f"{score!r} names a score where higher is better: validation improving would read as "
                    f"validation getting worse. Write ({spec[0]!r}, {spec[1]!r}, 'max') (or 'min' if lower "
                    "really is better)."
                )
        mode = spec[2] if len(spec) == 3 else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"Mode of pair {name!r} must be one of 'min', 'max'; got {mode!r}.")
        out[name] = (spec[0], spec[1], mode)
    return out


def _check_probe(
    probe: Any, probe_metrics: Mapping[str, Any] | None, pairs: Mapping[str, Any]
) -> dict[str, Metric]:
    """Validate the probe arguments; return the probe metrics as a dict."""
    if probe is not None and not isinstance(probe, DataLoader):
        bad_type = isinstance(probe, bool) or not isinstance(probe, (int, float))
        if bad_type or not 0 < probe <= 1:
            raise (TypeError if bad_type else ValueError)(
                "`probe` must be None, a number in (0, 1] (a fraction of the training set) or a "
                f"DataLoader; got {probe!r}."
            )
    metrics = dict(probe_metrics or {})
    if metrics and probe is None:
        raise ValueError("`probe_metrics` needs `probe` (a fraction of the training set or a DataLoader).")
    for name, metric in metrics.items():
        if name not in pairs:
            raise ValueError(f"`probe_metrics` names unknown pair {name!r}. Valid pairs: {list(pairs)}.")
        if not isinstance(metric, Metric):
            raise TypeError(f"`probe_metrics[{name!r}]` must be a torchmetrics.Metric; got {type(metric)}.")
    return metrics


def _restore_advice(trainer: pl.Trainer, val_key: str, mode: str, best_epoch: int | None) -> str | None:
    """How to keep the best weights, or ``None`` when an early stopping on the Trainer restores them."""
    stoppers = trainer.early_stopping_callbacks
    if any(getattr(cb, "restore_best_weights", False) for cb in stoppers):
        return None
    epoch = "the best epoch" if best_epoch is None else f"the weights of epoch {best_epoch}"
    ours = f'`lightning_reg.EarlyStopping(monitor="{val_key}", mode="{mode}")`'
    if not stoppers:
        return f"keep {epoch} with {ours}, which restores the best epoch when fit ends"
    if any(hasattr(cb, "restore_best_weights") for cb in stoppers):
        return f"keep {epoch}: set `restore_best_weights=True` on the EarlyStopping of the Trainer"
    return (
        f"keep {epoch}: Lightning's EarlyStopping on the Trainer stops without restoring them; {ours} in "
        "its place restores the best epoch when fit ends"
    )


class OverfittingMonitor(Callback):
    r"""Pair train and validation metrics; alert per pair when validation gets worse while training improves.

    At every check (the end of each training epoch in which validation ran, so both sides exist) the
    monitor computes per pair the gap (validation minus train, signed by ``mode`` so that positive means
    overfitting), the relative gap, Prechelt's generalization loss ``GL`` (how much worse validation is than
    its best so far, in percent), the validation trend (t-statistic of the least-squares slope over the last
    ``window`` checks), Prechelt's ``PQ`` and ``UP_s``, and decides, per pair, whether the check is an
    **alert** (see ``OverfittingCriteria``):

    * the pair's criteria fire; by default ``trend``: validation more than 5 % (``"min"`` pairs, losses) or
      10 % (``"max"`` pairs, accuracies) worse than its best *and* rising as a trend over the last 8 checks
      (t >= 2.5), so a single noisy check never alerts;
    * training still improves over the same window (otherwise the run is diverging or stuck, not
      overfitting) and the gap is positive: validation worse than training. A negative gap is never called
      overfitting (with dropout, augmentation or mixing the train metric is pessimistic; set ``probe``);
    * the check is past ``warmup``.

    The defaults were chosen with ``benchmarks/overfitting_alerts.py`` on real runs of the example projects
    (false alarms and detection delay; the table is in the docs). Logged every check (epoch-level, same
    value on every rank): ``overfit/<pair>_gap``, ``_rel_gap``, ``_gl``, ``_trend`` and ``_pq`` (once
    defined), ``overfit/<pair>_alert`` (1.0 at an alert of that pair) and ``overfit/alert`` (1.0 if any
    pair alerts); the keys are ``lightning_reg._shared.keys.Keys``' and the report reads them.

    An *episode* of a pair starts at its first alerting check and lasts while its checks keep alerting. At
    the start of an episode the action runs once: ``"warn"`` issues one rank-zero warning naming the pair,
    the numbers and the next steps that are not already in place (keeping the best epoch's weights is
    proposed only when no early stopping on the Trainer restores them; regularizing more as ``hint`` says);
    ``"stop"`` warns and stops training on all ranks (decided through
    ``trainer.strategy.reduce_boolean_decision``); a callable is called as ``action(trainer, pl_module,
    report)`` with ``report`` a dict holding ``epoch``, ``step``, ``check``, ``alert`` (any pair),
    ``new_episodes`` (the pairs whose episode starts) and ``pairs`` (``{pair: CheckReport.as_dict()}``).

    Train-side values are read from ``trainer.callback_metrics`` at ``on_train_epoch_end``: log them in
    ``training_step`` with ``on_epoch=True`` (the epoch mean; a key logged per step only holds the last
    batch's value, and the monitor warns once). Validation values are captured at the last
    ``on_validation_end`` before that (mid-epoch validation with ``val_check_interval < 1`` included; epochs
    without validation, e.g. with ``check_val_every_n_epoch > 1``, are not checks). In distributed runs the
    values are averaged across ranks once per check (one all-reduce), so every rank takes the same
    decision even if a metric was logged without ``sync_dist``.

    **Probe** (honest gap): training metrics are measured with dropout, augmentation and batch mixing on.
    With ``probe`` set, after every validation an ``EvalModeProbe`` evaluates the model in eval mode,
    without gradients, on a fixed subset of the training data (``probe=<float>``: that fraction of the
    training set, chosen once with ``probe_seed``, sharded across ranks, in batches of the training
    loader's size; ``probe=<DataLoader>``: that loader, evaluated as given on every rank), and that value
    replaces the train side:

    * with ``probe_metrics={pair: torchmetrics.Metric}``, the metric is updated with
      ``probe_forward(pl_module, batch)`` (default ``(pl_module(batch[0]), batch[1])``) and computed (synced
      by torchmetrics across ranks);
    * pairs without a probe metric use the module's own ``validation_step``: it runs on the probe batches
      with ``self.log`` captured (nothing reaches the loggers) and the pair's *validation* key, averaged over
      the probe set weighted by batch size, becomes the train side (a torchmetrics object logged there
      accumulates the probe batches on a clean state; the module's own metric states are put back after).

    The probe restores the global random state afterwards, so it does not change the training trajectory.
    Cost: one extra evaluation pass over the probe subset per validation, i.e. about
    ``probe_size / val_size`` times the cost of validation.

    A reused instance starts fresh at every ``fit`` (history, counters, episodes) unless the ``fit``
    resumes from a checkpoint, which restores them.

    Args:
        pairs: ``{name: (train_key, val_key)}`` or ``{name: (train_key, val_key, mode)}``, mode ``"min"``
            (the default) or ``"max"``. A pair whose key names a score to maximise (``acc``, ``f1``,
            ``auc``, ...: see ``lightning_reg._shared.keys.maximised_score_name``) must give its mode.
        criteria: ``{criterion: threshold}`` or ``{criterion: {pair: threshold}}`` with criteria ``"trend"``
            (GL floor in percent, with a t >= 2.5 rise over ``window`` checks), ``"gl"`` (GL in percent,
            Prechelt's alpha), ``"pq"`` (Prechelt's alpha), ``"up"`` (threshold = s), ``"gap"``,
            ``"rel_gap"`` (above threshold ``patience`` checks in a row). Default: ``trend`` at 5.0 for
            ``"min"`` pairs and 10.0 for ``"max"`` pairs (see ``default_criteria``).
        action: ``"warn"``, ``"stop"``, or a callable ``(trainer, pl_module, report)``.
        warmup: number of checks at the start of training during which no alert is raised (values are still
            computed, logged and counted).
        patience: checks in a row a ``gap`` / ``rel_gap`` condition must hold.
        strip_length: ``k`` of Prechelt's P_k, the training progress over a strip of the last ``k``
            checks' train values (``>= 2``).
        window: checks of the trend test and of the training-still-improves condition (``>= 3``).
        probe: ``None`` (use the logged train metrics), a fraction in ``(0, 1]`` of the training set, or a
            ``DataLoader``.
        probe_metrics: ``{pair: torchmetrics.Metric}`` used by the probe; other pairs use ``validation_step``.
        probe_forward: ``(pl_module, batch) -> (preds, target)`` for ``probe_metrics``.
        probe_seed: seed of the fixed random subset when ``probe`` is a fraction.
        sync_values: average the values over ranks before deciding (one all-reduce per check).
        hint: the sentence an alert gives as the way to regularize more (``preset_callbacks`` passes the
            next stronger preset); ``None``: try the ``'mild'`` preset, or the regularization finder.
        verbose: ``0``/``False``: warnings only; ``1`` (default): one line at fit start and, if any pair
            alerted, one line at fit end; ``2``/``True``: the whole table of checks at fit end.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad value (unknown criterion or pair, a GL threshold below 1 %, a pair of accuracies
            without its mode, ...).

    Example:
        >>> monitor = OverfittingMonitor(
        ...     pairs={"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")},
        ...     criteria={"trend": 5.0, "gap": {"acc": 0.15}},
        ... )
        >>> monitor.state_key
        "OverfittingMonitor{'pairs': ['loss', 'acc'], 'criteria': ['gap', 'trend']}"
    """

    def __init__(
        self,
        pairs: dict[str, tuple[str, str] | tuple[str, str, str]],
        criteria: dict[str, float | dict[str, float]] | None = None,
        action: str | Callable[[pl.Trainer, pl.LightningModule, dict[str, Any]], None] = "warn",
        warmup: int = 0,
        patience: int = 1,
        strip_length: int = 5,
        window: int = 8,
        probe: float | DataLoader | None = None,
        probe_metrics: dict[str, Metric] | None = None,
        probe_forward: Callable[[pl.LightningModule, Any], tuple[Any, Any]] | None = None,
        probe_seed: int = 0,
        sync_values: bool = True,
        hint: str | None = None,
        verbose: bool | int = 1,
    ) -> None:
        super().__init__()
        self.pairs = _parse_pairs(pairs)
        if not callable(action) and action not in _ACTIONS:
            raise ValueError(
                f"`action` must be one of 'warn', 'stop' or a callable (trainer, pl_module, report); got "
                f"{action!r}."
            )
        check_int("warmup", warmup, low=0)
        check_int("probe_seed", probe_seed)
        check_bool("sync_values", sync_values)
        check_callable("probe_forward", probe_forward, none_ok=True)
        self.hint = _DEFAULT_HINT if hint is None else check_str("hint", hint)
        self.verbose = check_verbose(verbose)
        self.probe_metrics = _check_probe(probe, probe_metrics, self.pairs)
        # validates criteria names and thresholds, patience, strip_length and window
        modes = {n: p[2] for n, p in self.pairs.items()}
        self.criteria = OverfittingCriteria(modes, criteria, patience, strip_length, window, warmup).criteria
        self.action = action
        self.warmup = warmup
        self.patience = patience
        self.strip_length = strip_length
        self.window = window
        self.probe = probe
        self.probe_forward = probe_forward
        self.probe_seed = probe_seed
        self.sync_values = sync_values
        self._wording = AlertWording(self.pairs, window, self.criteria)
        self._probe: EvalModeProbe | None = None
        if probe is not None:
            keys = {n: val for n, (_, val, _) in self.pairs.items() if n not in self.probe_metrics}
            self._probe = EvalModeProbe(probe, keys, self.probe_metrics, probe_forward, probe_seed)
        self._start_fresh()

    def _start_fresh(self) -> None:
        modes = {n: p[2] for n, p in self.pairs.items()}
        self._criteria = OverfittingCriteria(
            modes, self.criteria, self.patience, self.strip_length, self.window, self.warmup
        )
        self.history: list[dict[str, Any]] = []
        self.in_episode: dict[str, bool] = {name: False for name in self.pairs}
        self.num_episodes = 0
        self.stopped_epoch: int | None = None
        self._pending_val: dict[str, Any] | None = None
        self._pending_probe: dict[str, float] | None = None
        if self._probe is not None:
            self._probe.reset()
        self._checked_logging = False
        self._hinted_negative_gap = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pairs=list(self.pairs), criteria=sorted(self.criteria))

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start_fresh()  # before Lightning loads a checkpoint's state into this callback
        if self._probe is not None and isinstance(
            trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
        ):
            raise MisconfigurationException(
                f"OverfittingMonitor: `probe` is not supported with {type(trainer.strategy).__name__}: it "
                "calls the unwrapped LightningModule, whose sharded parameters would not be gathered. Use "
                "`probe=None` (the logged train metrics) with this strategy."
            )
        if self._probe is not None:
            self._probe.to(pl_module.device)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pairs = ", ".join(f"{n} ({t} vs {v}, {m})" for n, (t, v, m) in self.pairs.items())
        crit = ", ".join(
            f"{c} {sorted(set(t.values()))[0]:g}" if len(set(t.values())) == 1 else f"{c} {t}"
            for c, t in self.criteria.items()
        )
        side = "logged train metrics" if self._probe is None else "eval-mode probe of the training set"
        say(self.verbose, 1, f"OverfittingMonitor: {pairs}; criteria {crit}; train side from {side}.")
        if trainer.limit_val_batches == 0 or not is_overridden("validation_step", pl_module):
            why = "limit_val_batches=0" if trainer.limit_val_batches == 0 else "no validation_step"
            rank_zero_warn(
                f"OverfittingMonitor: validation does not run ({why}), so the validation side of"
                f" {sorted(v for _, v, _ in self.pairs.values())} is never measured and no check will run;"
                " enable validation or remove the monitor."
            )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        missing = [val for _, val, _ in self.pairs.values() if val not in metrics]
        if missing:
            raise MisconfigurationException(
                f"OverfittingMonitor: validation metric(s) {missing} were never logged. Logged keys: "
                f"{sorted(metrics)}. Log them in `validation_step` with `self.log`, or fix `pairs`."
            )
        self._pending_val = {
            name: torch.as_tensor(metrics[val]).detach().clone() for name, (_, val, _) in self.pairs.items()
        }
        if self._probe is not None:
            self._pending_probe = self._probe.measure(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_val is None:
            return  # no validation since the last check
        probe = self._pending_probe or {}
        if not self._train_side_logged(trainer, probe):
            self._pending_val = None
            self._pending_probe = None
            return
        names = list(self.pairs)
        device = pl_module.device
        metrics = trainer.callback_metrics
        train = [probe[n] if n in probe else metrics[self.pairs[n][0]] for n in names]
        vals = [self._pending_val[n] for n in names]
        stacked = torch.stack(
            [
                torch.as_tensor(v, dtype=_value_dtype(device), device=device).detach().reshape(())
                for v in train + vals
            ]
        )
        if self.sync_values and trainer.world_size > 1:
            stacked = trainer.strategy.reduce(stacked, reduce_op="mean")
        floats = stacked.tolist()  # the one host sync of a check (once per epoch)
        values = {n: (floats[i], floats[len(names) + i]) for i, n in enumerate(names)}
        self._pending_val = None
        self._pending_probe = None
        self._check(trainer, pl_module, values)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        if self.verbose >= 2:
            say(self.verbose, 2, self.summary_table())
        elif self.num_episodes:
            say(self.verbose, 1, self.summary_line())

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "criteria": self._criteria.state_dict(),
            "history": [dict(h) for h in self.history],
            "in_episode": dict(self.in_episode),
            "num_episodes": self.num_episodes,
            "stopped_epoch": self.stopped_epoch,
            # a checkpoint written at `on_validation_end` (before this epoch's check) keeps what was measured
            "pending_val": (
                None if self._pending_val is None else {k: float(v) for k, v in self._pending_val.items()}
            ),
            "pending_probe": self._pending_probe,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._criteria.load_state_dict(state_dict["criteria"])
        self.history = [dict(h) for h in state_dict["history"]]
        episode = state_dict["in_episode"]
        if isinstance(episode, bool):  # lightning-reg 0.1: one flag for every pair
            episode = {name: episode for name in self.pairs}
        self.in_episode = {name: bool(episode.get(name, False)) for name in self.pairs}
        self.num_episodes = int(state_dict["num_episodes"])
        self.stopped_epoch = state_dict["stopped_epoch"]
        pending = state_dict.get("pending_val")
        self._pending_val = None if pending is None else {k: torch.tensor(v) for k, v in pending.items()}
        self._pending_probe = state_dict.get("pending_probe")

    # ------------------------------------------------------------------ logic

    def _train_side_logged(self, trainer: pl.Trainer, probe: Mapping[str, float]) -> bool:
        """Whether every pair has its train side; skip a resumed epoch's check (with a warning) if not."""
        metrics = trainer.callback_metrics
        missing = [tr for name, (tr, _, _) in self.pairs.items() if name not in probe and tr not in metrics]
        if missing and trainer.fit_loop.restarting:
            # Resumed from a checkpoint written at `on_validation_end` of an epoch's last batch: Lightning
            # replays only the epoch-end hooks and does not restore that epoch's train metrics.
            rank_zero_warn(
                f"OverfittingMonitor: skipping the check of epoch {trainer.current_epoch}: the run resumed "
                "from a checkpoint saved after validation but before the end of the training epoch, and "
                f"Lightning does not restore the epoch's train metrics {missing}. Save checkpoints at the "
                "end of the training epoch (`ModelCheckpoint(save_on_train_epoch_end=True)`) to keep all "
                "checks."
            )
            return False
        if missing:
            raise MisconfigurationException(
                f"OverfittingMonitor: train metric(s) {missing} were never logged. Logged keys: "
                f"{sorted(metrics)}. Log them in `training_step` with `self.log(..., on_epoch=True)`, or fix "
                "`pairs`."
            )
        if not self._checked_logging:
            self._checked_logging = True
            self._warn_per_step_train_keys(trainer, probe)
        return True

    def _warn_per_step_train_keys(self, trainer: pl.Trainer, probe: Mapping[str, float]) -> None:
        """Warn once if a train key was logged per step only: its epoch-end value is the last batch's."""
        results = getattr(trainer, "_results", None)
        if results is None:
            return
        wanted = {tr: name for name, (tr, _, _) in self.pairs.items() if name not in probe}
        for result in results.values():
            meta = getattr(result, "meta", None)
            if meta is None or meta.name not in wanted or meta.fx != "training_step":
                continue
            if meta.on_step and not meta.on_epoch:
                rank_zero_warn(
                    f"OverfittingMonitor: `{meta.name}` (pair {wanted[meta.name]!r}) is logged per step "
                    "only, so at the end of the epoch it holds the last batch's value, not the epoch's: "
                    "every check compares one noisy batch with the whole validation set. Log it with "
                    f"`self.log({meta.name!r}, ..., on_epoch=True)` (add `on_step=False` to keep only the "
                    "epoch value)."
                )

    def _check(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict[str, tuple[float, float]]
    ) -> None:
        reports: dict[str, CheckReport] = self._criteria.update(values)
        alerts = {name: r.alert for name, r in reports.items()}
        any_alert = any(alerts.values())
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "check": self._criteria.num_checks - 1,
            "alert": any_alert,
            "pairs": {n: r.as_dict() for n, r in reports.items()},
        }
        self.history.append(entry)
        self._log_check(pl_module, reports, any_alert)
        self._hint_at_negative_gap(trainer, reports)
        new = [name for name, alert in alerts.items() if alert and not self.in_episode[name]]
        self.in_episode = alerts
        entry["new_episodes"] = new
        stop = False
        if new:
            self.num_episodes += len(new)
            if callable(self.action):
                self.action(trainer, pl_module, entry)
            else:
                rank_zero_warn(self._message(trainer, entry, new), category=UserWarning)
                stop = self.action == "stop"
        if self.action == "stop":
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True
                self.stopped_epoch = trainer.current_epoch

    @staticmethod
    def _log_check(pl_module: pl.LightningModule, reports: Mapping[str, CheckReport], alert: bool) -> None:
        logs: dict[str, float] = {}
        for name, r in reports.items():
            logs[Keys.overfit(name, "gap")] = r.gap
            logs[Keys.overfit(name, "rel_gap")] = r.rel_gap
            logs[Keys.overfit(name, "gl")] = r.gl
            if r.trend is not None:  # defined from the `window`-th check on, on every rank alike
                logs[Keys.overfit(name, "trend")] = r.trend
            if r.pq is not None:  # defined from the `strip_length`-th check on, on every rank alike
                logs[Keys.overfit(name, "pq")] = r.pq
            logs[Keys.overfit(name, "alert")] = float(r.alert)
        logs[Keys.OVERFIT_ALERT] = float(alert)
        # The key set must be the same on every rank (each key is one collective). Values are identical on all
        # ranks when `sync_values`; "max" keeps them exact and silences the epoch-level sync warning.
        pl_module.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

    def _hint_at_negative_gap(self, trainer: pl.Trainer, reports: Mapping[str, CheckReport]) -> None:
        """Once per fit: validation worsens but stays better than a train-mode train side; propose a probe."""
        held = [n for n, r in reports.items() if r.held_back == "negative gap"]
        if not held or self._hinted_negative_gap or self._probe is not None:
            return
        self._hinted_negative_gap = True
        r = reports[held[0]]
        train_key, val_key, _ = self.pairs[held[0]]
        rank_zero_warn(
            f"OverfittingMonitor: {val_key} is getting worse while {train_key} improves (epoch "
            f"{trainer.current_epoch}), but validation is still better than training (gap {r.gap:.4g}), "
            "so this is not called overfitting: the train side is measured in train mode (dropout, "
            "augmentation, batch mixing make it pessimistic). Set `probe=0.1` to measure it in eval mode "
            "on a fixed tenth of the training set."
        )

    def _message(self, trainer: pl.Trainer, entry: dict[str, Any], new: list[str]) -> str:
        _, val_key, mode = self.pairs[new[0]]
        best_epoch = self._wording.epoch_of_check(self.history, entry["pairs"][new[0]]["best_check"])
        restore = _restore_advice(trainer, val_key, mode, best_epoch)
        regularize = f"regularize more: {self.hint[0].lower() + self.hint[1:]}"
        steps = [restore, regularize] if restore else [regularize]
        return self._wording.alert(self.history, entry, new, steps, stopping=self.action == "stop")

    def summary_line(self) -> str:
        """One line: per pair, the epochs its alert episodes started at (or that it never alerted).

        Example:
            >>> OverfittingMonitor({"loss": ("train_loss", "val_loss")}).summary_line()
            'OverfittingMonitor: no alert (loss).'
        """
        return self._wording.summary_line(self.history)

    def summary_table(self) -> str:
        """Return the history as a text table: per check and pair, the values and whether that pair alerted.

        Example:
            >>> monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")})
            >>> monitor.summary_table().splitlines()[0]
            'OverfittingMonitor summary'
        """
        return self._wording.summary_table(self.history)
