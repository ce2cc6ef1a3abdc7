"""OverfittingMonitor: pair train and validation metrics; say clearly, per pair, when the model memorizes."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric
from typing_extensions import override

from lightning_reg._shared.keys import Keys
from lightning_reg._shared.validation import check_bool, check_callable, check_int
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.overfitting.criteria import CheckReport, OverfittingCriteria

__all__ = ["OverfittingMonitor"]

_ACTIONS = ("warn", "stop")


def _default_probe_forward(pl_module: pl.LightningModule, batch: Any) -> tuple[Any, Any]:
    """Split ``batch`` as ``(x, y, ...)`` and return ``(pl_module(x), y)``."""
    return pl_module(batch[0]), batch[1]


def _acc_dtype(device: torch.device) -> torch.dtype:
    """Float64 for the few per-check values, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _batch_size(batch: Any) -> int:
    """Infer the batch size as the length of the first tensor found in ``batch``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            size = _batch_size(item)
            if size:
                return size
    return 0


def _snapshot_metric(metric: Metric) -> dict[str, Any]:
    """Copy a torchmetrics object's accumulated state (tensors and list states)."""
    state = {
        k: v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v]
        for k, v in metric.metric_state.items()
    }
    return {"state": state, "update_count": metric._update_count, "computed": metric._computed}


def _restore_metric(metric: Metric, snapshot: dict[str, Any]) -> None:
    """Put back a state copied by :func:`_snapshot_metric`."""
    for k, v in snapshot["state"].items():
        setattr(metric, k, v)
    metric._update_count = snapshot["update_count"]
    metric._computed = snapshot["computed"]


class OverfittingMonitor(Callback):
    r"""Pair train and validation metrics; alert per pair when validation gets worse while training improves.

    At every check (the end of each training epoch in which validation ran, so both sides exist) the
    monitor computes per pair the gap (validation minus train, signed by ``mode`` so that positive means
    overfitting), the relative gap, Prechelt's generalization loss ``GL`` (how much worse validation is than
    its best so far, in percent), the validation trend (t-statistic of the least-squares slope over the last
    ``window`` checks), Prechelt's ``PQ`` and ``UP_s``, and decides, per pair, whether the check is an
    **alert** (see :class:`~lightning_reg.overfitting.criteria.OverfittingCriteria`):

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
    pair alerts); the keys are :class:`lightning_reg._shared.keys.Keys`' and the report reads them.

    An *episode* of a pair starts at its first alerting check and lasts while its checks keep alerting. At
    the start of an episode the action runs once: ``"warn"`` issues one rank-zero warning naming the pair,
    the numbers and concrete next steps; ``"stop"`` warns and stops training on all ranks (decided through
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
    With ``probe`` set, after every validation the model is evaluated in eval mode, without gradients, on a
    fixed subset of the training data (``probe=<float>``: that fraction of the training set, chosen once
    with ``probe_seed``, sharded across ranks, in batches of the training loader's size, also when it is
    built with a ``batch_sampler``; ``probe=<DataLoader>``: that loader, evaluated as given on every rank),
    and that value replaces the train side:

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
            (default) or ``"max"``.
        criteria: ``{criterion: threshold}`` or ``{criterion: {pair: threshold}}`` with criteria ``"trend"``
            (GL floor in percent, with a t >= 2.5 rise over ``window`` checks), ``"gl"`` (GL in percent,
            Prechelt's alpha), ``"pq"`` (Prechelt's alpha), ``"up"`` (threshold = s), ``"gap"``,
            ``"rel_gap"`` (above threshold ``patience`` checks in a row). Default: ``trend`` at 5.0 for
            ``"min"`` pairs and 10.0 for ``"max"`` pairs (see
            :func:`~lightning_reg.overfitting.criteria.default_criteria`).
        action: ``"warn"``, ``"stop"``, or a callable ``(trainer, pl_module, report)``.
        warmup: number of checks at the start of training during which no alert is raised (values are still
            computed, logged and counted).
        patience: checks in a row a ``gap`` / ``rel_gap`` condition must hold.
        strip: ``k`` of Prechelt's P_k (train values of the last ``k`` checks).
        window: checks of the trend test and of the training-still-improves condition (``>= 3``).
        probe: ``None`` (use the logged train metrics), a fraction in ``(0, 1]`` of the training set, or a
            ``DataLoader``.
        probe_metrics: ``{pair: torchmetrics.Metric}`` used by the probe; other pairs use ``validation_step``.
        probe_forward: ``(pl_module, batch) -> (preds, target)`` for ``probe_metrics``.
        probe_seed: seed of the fixed random subset when ``probe`` is a fraction.
        sync_values: average the values over ranks before deciding (one all-reduce per check).
        verbose: ``0``/``False``: warnings only; ``1`` (default): one line at fit start and, if any pair
            alerted, one line at fit end; ``2``/``True``: the whole table of checks at fit end.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad value (unknown criterion or pair, a GL threshold below 1 %, ...).

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
        strip: int = 5,
        window: int = 8,
        probe: float | DataLoader | None = None,
        probe_metrics: dict[str, Metric] | None = None,
        probe_forward: Callable[[pl.LightningModule, Any], tuple[Any, Any]] | None = None,
        probe_seed: int = 0,
        sync_values: bool = True,
        verbose: bool | int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(pairs, Mapping) or not pairs:
            raise ValueError(
                f"`pairs` must be a non-empty dict {{name: (train_key, val_key[, mode])}}; got {pairs!r}."
            )
        self.pairs: dict[str, tuple[str, str, str]] = {}
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
            mode = spec[2] if len(spec) == 3 else "min"
            if mode not in ("min", "max"):
                raise ValueError(f"Mode of pair {name!r} must be one of 'min', 'max'; got {mode!r}.")
            self.pairs[name] = (spec[0], spec[1], mode)
        if not callable(action) and action not in _ACTIONS:
            raise ValueError(
                f"`action` must be one of 'warn', 'stop' or a callable (trainer, pl_module, report); got "
                f"{action!r}."
            )
        check_int("warmup", warmup, low=0)
        check_int("probe_seed", probe_seed)
        check_bool("sync_values", sync_values)
        check_callable("probe_forward", probe_forward, none_ok=True)
        self.verbose = check_verbose(verbose)
        # validates criteria names and thresholds, patience, strip and window
        modes = {n: p[2] for n, p in self.pairs.items()}
        self._criteria = OverfittingCriteria(modes, criteria, patience, strip, window, warmup)
        if probe is not None and not isinstance(probe, DataLoader):
            bad_type = isinstance(probe, bool) or not isinstance(probe, (int, float))
            if bad_type or not 0 < probe <= 1:
                raise (TypeError if bad_type else ValueError)(
                    "`probe` must be None, a number in (0, 1] (a fraction of the training set) or a "
                    f"DataLoader; got {probe!r}."
                )
        probe_metrics = dict(probe_metrics or {})
        if probe_metrics and probe is None:
            raise ValueError(
                "`probe_metrics` needs `probe` (a fraction of the training set or a DataLoader)."
            )
        for name, metric in probe_metrics.items():
            if name not in self.pairs:
                raise ValueError(
                    f"`probe_metrics` names unknown pair {name!r}. Valid pairs: {list(self.pairs)}."
                )
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"`probe_metrics[{name!r}]` must be a torchmetrics.Metric; got {type(metric)}."
                )
        self.criteria = self._criteria.criteria
        self.action = action
        self.warmup = warmup
        self.patience = patience
        self.strip = strip
        self.window = window
        self.probe = probe
        self.probe_metrics = probe_metrics
        self.probe_forward = probe_forward or _default_probe_forward
        self.probe_seed = probe_seed
        self.sync_values = sync_values
        self._start_fresh()

    def _start_fresh(self) -> None:
        modes = {n: p[2] for n, p in self.pairs.items()}
        self._criteria = OverfittingCriteria(
            modes, self.criteria, self.patience, self.strip, self.window, self.warmup
        )
        self.history: list[dict[str, Any]] = []
        self.in_episode: dict[str, bool] = {name: False for name in self.pairs}
        self.num_episodes = 0
        self.stopped_epoch: int | None = None
        self._pending_val: dict[str, float] | None = None
        self._pending_probe: dict[str, float] | None = None
        self._probe_loader: DataLoader | None = None
        self._checked_logging = False
        self._hinted_negative_gap = False
        self._preset: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pairs=list(self.pairs), criteria=sorted(self.criteria))

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start_fresh()  # before Lightning loads a checkpoint's state into this callback
        if self.probe is not None and isinstance(
            trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
        ):
            raise MisconfigurationException(
                f"OverfittingMonitor: `probe` is not supported with {type(trainer.strategy).__name__}: it "
                "calls the unwrapped LightningModule, whose sharded parameters would not be gathered. Use "
                "`probe=None` (the logged train metrics) with this strategy."
            )
        for metric in self.probe_metrics.values():
            metric.to(pl_module.device)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._preset = getattr(pl_module, "preset", None)  # RegularizedModule(preset=...): named in the hint
        pairs = ", ".join(f"{n} ({t} vs {v}, {m})" for n, (t, v, m) in self.pairs.items())
        crit = ", ".join(
            f"{c} {sorted(set(t.values()))[0]:g}" if len(set(t.values())) == 1 else f"{c} {t}"
            for c, t in self.criteria.items()
        )
        side = "logged train metrics" if self.probe is None else "eval-mode probe of the training set"
        say(self.verbose, 1, f"OverfittingMonitor: {pairs}; criteria {crit}; train side from {side}.")
        from lightning.pytorch.utilities.model_helpers import is_overridden

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
        if self.probe is not None:
            self._pending_probe = self._run_probe(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_val is None:
            return  # no validation since the last check
        probe = self._pending_probe or {}
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
            self._pending_val = None
            self._pending_probe = None
            return
        if missing:
            raise MisconfigurationException(
                f"OverfittingMonitor: train metric(s) {missing} were never logged. Logged keys: "
                f"{sorted(metrics)}. Log them in `training_step` with `self.log(..., on_epoch=True)`, or fix "
                "`pairs`."
            )
        if not self._checked_logging:
            self._checked_logging = True
            self._warn_per_step_train_keys(trainer, probe)
        names = list(self.pairs)
        device = pl_module.device
        train = [probe[n] if n in probe else metrics[self.pairs[n][0]] for n in names]
        vals = [self._pending_val[n] for n in names]
        stacked = torch.stack(
            [
                torch.as_tensor(v, dtype=_acc_dtype(device), device=device).detach().reshape(())
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
        check = self._criteria.num_checks - 1
        alerts = {name: r.alert for name, r in reports.items()}
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "check": check,
            "alert": any(alerts.values()),
            "pairs": {n: r.as_dict() for n, r in reports.items()},
        }
        self.history.append(entry)
        logs: dict[str, float] = {}
        for name, r in reports.items():
            logs[Keys.overfit(name, "gap")] = r.gap
            logs[Keys.overfit(name, "rel_gap")] = r.rel_gap
            logs[Keys.overfit(name, "gl")] = r.gl
            if r.trend is not None:  # defined from the `window`-th check on, on every rank alike
                logs[Keys.overfit(name, "trend")] = r.trend
            if r.pq is not None:  # defined from the `strip`-th check on, on every rank alike
                logs[Keys.overfit(name, "pq")] = r.pq
            logs[Keys.overfit(name, "alert")] = float(r.alert)
        logs[Keys.OVERFIT_ALERT] = float(entry["alert"])
        # The key set must be the same on every rank (each key is one collective). Values are identical on all
        # ranks when `sync_values`; "max" keeps them exact and silences the epoch-level sync warning.
        pl_module.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

        held = [n for n, r in reports.items() if r.held_back == "negative gap"]
        if held and not self._hinted_negative_gap and self.probe is None:
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
        new = [name for name, alert in alerts.items() if alert and not self.in_episode[name]]
        self.in_episode = alerts
        entry["new_episodes"] = new
        stop = False
        if new:
            self.num_episodes += len(new)
            if callable(self.action):
                self.action(trainer, pl_module, entry)
            else:
                rank_zero_warn(self._message(entry, new), category=UserWarning)
                stop = self.action == "stop"
        if self.action == "stop":
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True
                self.stopped_epoch = trainer.current_epoch

    def _epoch_of_check(self, check: int) -> int | None:
        for h in self.history:
            if h["check"] == check:
                return int(h["epoch"])
        return None

    def _describe(self, name: str, r: Mapping[str, Any]) -> str:
        train_key, val_key, mode = self.pairs[name]
        best_epoch = self._epoch_of_check(r["best_check"])
        best = f"{r['best_val']:.4g}" + ("" if best_epoch is None else f" (epoch {best_epoch})")
        parts = []
        for crit in r["fired"]:
            if crit in ("trend", "gl"):
                rise = f"{val_key}={r['val']:.4g} is {r['gl']:.3g} % worse than its best {best}"
                if crit == "trend":
                    rise += f" and has risen over the last {self.window} checks (t = {r['trend']:.2g})"
                parts.append(rise)
            elif crit == "pq":
                parts.append(f"PQ = {r['pq']:.3g} (GL {r['gl']:.3g} % against little training progress)")
            elif crit == "up":
                parts.append(f"{val_key} got worse {r['up_count']} checks in a row")
            else:
                parts.append(
                    f"the train/validation gap is {r['gap']:.4g} (relative {r['rel_gap']:.3g}), above "
                    f"{self.criteria[crit][name]:g} ({crit})"
                )
        return (
            f"{'; '.join(dict.fromkeys(parts))}, while {train_key}={r['train']:.4g} kept improving "
            f"(gap {r['gap']:.4g})"
        )

    def _message(self, entry: dict[str, Any], new: list[str]) -> str:
        described = [f"`{n}`: {self._describe(n, entry['pairs'][n])}" for n in new]
        name = new[0]
        r = entry["pairs"][name]
        _, val_key, mode = self.pairs[name]
        best_epoch = self._epoch_of_check(r["best_check"])
        restore = (
            f"keep the weights of epoch {best_epoch} with "
            f'`lightning_reg.EarlyStopping(monitor="{val_key}", mode="{mode}")`, which restores the best '
            "epoch when fit ends"
        )
        what = "Stopping training. " if self.action == "stop" else ""
        from lightning_reg.presets.core import overfitting_hint

        hint = overfitting_hint(self._preset)
        return (
            f"OverfittingMonitor: overfitting at epoch {entry['epoch']} (step {entry['step']}) in "
            + "; ".join(described)
            + f". {what}Next steps: {restore}; regularize more: {hint[0].lower() + hint[1:]} Or train on"
            " more data, with a smaller model or for fewer epochs."
        )

    def summary_line(self) -> str:
        """One line: per pair, the epochs its alert episodes started at (or that it never alerted).

        Example:
            >>> OverfittingMonitor({"loss": ("train_loss", "val_loss")}).summary_line()
            'OverfittingMonitor: no alert (loss).'
        """
        starts: dict[str, list[int]] = {name: [] for name in self.pairs}
        previous = {name: False for name in self.pairs}
        for h in self.history:
            for name, r in h["pairs"].items():
                alert = bool(r.get("alert", h["alert"]))
                if alert and not previous[name]:
                    starts[name].append(int(h["epoch"]))
                previous[name] = alert
        parts = [f"{n} from epoch {', '.join(map(str, e))}" for n, e in starts.items() if e]
        quiet = [n for n, e in starts.items() if not e]
        if not parts:
            return f"OverfittingMonitor: no alert ({', '.join(quiet)})."
        tail = f"; no alert: {', '.join(quiet)}" if quiet else ""
        return f"OverfittingMonitor: overfitting alerts in {'; '.join(parts)}{tail}."

    def summary_table(self) -> str:
        """Return the history as a text table: per check and pair, the values and whether that pair alerted.

        Example:
            >>> monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")})
            >>> monitor.summary_table().splitlines()[0]
            'OverfittingMonitor summary'
        """
        lines = [
            "OverfittingMonitor summary",
            f"{'epoch':>5} {'pair':<12} {'train':>10} {'val':>10} "
            f"{'gap':>10} {'GL %':>8} {'trend t':>8} alert fired",
        ]
        for h in self.history:
            for name, r in h["pairs"].items():
                trend = "" if r.get("trend") is None else f"{r['trend']:.3g}"
                alert = "yes" if r.get("alert", h["alert"]) else "no"
                fired = ",".join(r["fired"])
                if r["fired"] and r.get("held_back"):
                    fired += f" (held back: {r['held_back']})"
                lines.append(
                    f"{h['epoch']:>5} {name:<12} {r['train']:>10.4g} {r['val']:>10.4g} {r['gap']:>10.4g} "
                    f"{r['gl']:>8.3g} {trend:>8} {alert:>5} {fired}"
                )
        return "\n".join(lines)

    # ------------------------------------------------------------------ probe

    def _build_probe_loader(self, trainer: pl.Trainer) -> DataLoader:
        if isinstance(self.probe, DataLoader):
            return self.probe
        train_loader = trainer.train_dataloader
        if not isinstance(train_loader, DataLoader):
            raise MisconfigurationException(
                "OverfittingMonitor: `probe` as a fraction needs a single training DataLoader (got "
                f"{type(train_loader).__name__}); pass a DataLoader as `probe` instead."
            )
        dataset = train_loader.dataset
        n = len(dataset)  # type: ignore[arg-type]
        size = max(1, round(float(self.probe) * n))  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.probe_seed)
        indices = torch.randperm(n, generator=generator)[:size].sort().values
        indices = indices[trainer.global_rank :: trainer.world_size].tolist()  # shard across ranks
        return DataLoader(
            Subset(dataset, indices),
            batch_size=_loader_batch_size(train_loader),
            shuffle=False,
            collate_fn=train_loader.collate_fn,
            num_workers=0,
        )

    @torch.no_grad()
    def _run_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        if self._probe_loader is None:
            self._probe_loader = self._build_probe_loader(trainer)
        module_pairs = [n for n in self.pairs if n not in self.probe_metrics]
        device = pl_module.device
        dtype = _acc_dtype(device)
        zero = torch.zeros((), dtype=dtype, device=device)
        sums = {n: zero for n in module_pairs}
        counts = {n: 0 for n in module_pairs}
        metric_objs: dict[str, Metric] = {}
        out: dict[str, float] = {}
        modes = {m: m.training for m in pl_module.modules()}
        # torchmetrics objects the module updates in validation_step: run the probe on clean states and put
        # the module's own states back afterwards, so neither side pollutes the other.
        module_metrics = [m for m in pl_module.modules() if isinstance(m, Metric)] if module_pairs else []
        snapshots = [_snapshot_metric(m) for m in module_metrics]
        captured: dict[str, Any] = {}

        def capture(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            captured[name] = (value, kwargs.get("batch_size"))

        # The probe must not shift the training run's random streams (a DataLoader iterator draws a seed).
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=rng_devices)
        rng.__enter__()
        pl_module.eval()
        try:
            if module_pairs:
                pl_module.log = capture  # type: ignore[method-assign]
            for metric in [*self.probe_metrics.values(), *module_metrics]:
                metric.reset()
            for batch_idx, batch in enumerate(self._probe_loader):
                batch = trainer.strategy.batch_to_device(batch)
                if self.probe_metrics:
                    preds, target = self.probe_forward(pl_module, batch)
                    for metric in self.probe_metrics.values():
                        metric.update(preds, target)
                if not module_pairs:
                    continue
                captured.clear()
                pl_module.validation_step(batch, batch_idx)
                for name in module_pairs:
                    key = self.pairs[name][1]
                    if key not in captured:
                        raise MisconfigurationException(
                            f"OverfittingMonitor probe: `validation_step` did not log {key!r} "
                            f"(it logged {sorted(captured)})."
                        )
                    value, size = captured[key]
                    if isinstance(value, Metric):  # it accumulates the probe batches itself
                        metric_objs[name] = value
                        continue
                    size = size or _batch_size(batch)
                    value = torch.as_tensor(value, device=device).detach().to(dtype)
                    sums[name] = sums[name] + value * size
                    counts[name] += size
            for name, metric in [*self.probe_metrics.items(), *metric_objs.items()]:
                out[name] = float(metric.compute())  # synced across ranks by torchmetrics
        finally:
            if module_pairs:
                del pl_module.log
            for metric, snapshot in zip(module_metrics, snapshots):
                _restore_metric(metric, snapshot)
            for metric in self.probe_metrics.values():
                metric.reset()
            for module, was_training in modes.items():
                module.train(was_training)
            rng.__exit__(None, None, None)
        plain = [n for n in module_pairs if n not in metric_objs]
        if plain:
            counts_t = torch.tensor([counts[n] for n in plain], dtype=dtype, device=device)
            totals = torch.cat([torch.stack([sums[n] for n in plain]), counts_t])
            if trainer.world_size > 1:
                totals = trainer.strategy.reduce(totals, reduce_op="sum")
            t = totals.tolist()  # one host sync for the whole probe
            for i, name in enumerate(plain):
                out[name] = t[i] / t[len(plain) + i] if t[len(plain) + i] else math.nan
        return out


def _loader_batch_size(loader: DataLoader) -> int:
    """Return the training loader's batch size, also when it is built with a ``batch_sampler``."""
    if loader.batch_size:
        return int(loader.batch_size)
    sampler = loader.batch_sampler
    for _ in range(4):  # Lightning and users wrap batch samplers; look a few levels down
        size = getattr(sampler, "batch_size", None)
        if isinstance(size, int) and size > 0:
            return size
        inner = getattr(sampler, "batch_sampler", None) or getattr(sampler, "_batch_sampler", None)
        if inner is None:
            break
        sampler = inner
    # a custom batch sampler without `batch_size`: the size of its first batch (random state left untouched)
    state = random.getstate()
    with torch.random.fork_rng():
        first = next(iter(loader.batch_sampler), None) if loader.batch_sampler is not None else None
    random.setstate(state)
    return max(1, len(first)) if first is not None else 1
