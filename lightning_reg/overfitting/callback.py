"""OverfittingMonitor: pair train and validation metrics; say clearly, and early, when the model memorizes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric
from typing_extensions import override

from lightning_reg.overfitting.criteria import CheckReport, OverfittingCriteria

__all__ = ["OverfittingMonitor"]

_ACTIONS = ("warn", "stop")
_HINT = (
    "Try more regularization (weight decay, dropout / stochastic depth, augmentation or mixing), a smaller "
    "model, more data, or early stopping with best-weights restore."
)


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
    r"""Pair train and validation metrics and raise an alert when the model starts to memorize.

    At every check (the end of each training epoch in which validation ran, so both sides exist) the
    monitor computes per pair the gap (validation minus train, signed by ``mode`` so that positive means
    overfitting), the relative gap, Prechelt's generalization loss ``GL``, training progress ``P_k`` and
    progress quotient ``PQ``, and the ``UP_s`` pattern (see :mod:`lightning_reg.overfitting`), logs
    ``overfit/<pair>_gap``, ``overfit/<pair>_rel_gap``, ``overfit/<pair>_gl``, ``overfit/<pair>_pq`` (once
    defined) and ``overfit/alert`` (1.0 while any criterion fires after warm-up), keeps a history, and prints
    a summary table at the end of fit on rank zero.

    An *episode* starts at the first alerting check and lasts while checks keep alerting. At its start the
    action runs once: ``"warn"`` issues one rank-zero warning with the numbers and a hint, ``"stop"`` warns
    and stops training on all ranks (decided through ``trainer.strategy.reduce_boolean_decision``), a
    callable is called as ``action(trainer, pl_module, report)`` with ``report`` a dict holding
    ``epoch``, ``step``, ``check``, ``alert`` and ``pairs`` (``{pair: CheckReport.as_dict()}``).

    Train-side values are read from ``trainer.callback_metrics`` at ``on_train_epoch_end``: log them in
    ``training_step`` (``on_epoch=True`` to get the epoch mean; a value logged only ``on_step`` is the last
    step's). Validation values are captured at the last ``on_validation_end`` before that (mid-epoch
    validation with ``val_check_interval < 1`` included; epochs without validation, e.g. with
    ``check_val_every_n_epoch > 1``, are not checks). In distributed runs the values are averaged across
    ranks once per check (one all-reduce), so every rank takes the same decision even if a metric was logged
    without ``sync_dist``.

    **Probe** (honest gap): training metrics are measured with dropout, augmentation and batch mixing on.
    With ``probe`` set, after every validation the model is evaluated in eval mode, without gradients, on a
    fixed subset of the training data (``probe=<float>``: that fraction of the training set, chosen once
    with ``probe_seed``, sharded across ranks; ``probe=<DataLoader>``: that loader, evaluated as given on
    every rank), and that value replaces the train side:

    * with ``probe_metrics={pair: torchmetrics.Metric}``, the metric is updated with
      ``probe_forward(pl_module, batch)`` (default ``(pl_module(batch[0]), batch[1])``) and computed (synced
      by torchmetrics across ranks);
    * pairs without a probe metric use the module's own ``validation_step``: it runs on the probe batches
      with ``self.log`` captured (nothing reaches the loggers) and the pair's *validation* key, averaged over
      the probe set weighted by batch size, becomes the train side (a torchmetrics object logged there
      accumulates the probe batches on a clean state; the module's own metric states are put back after).

    The probe restores the global random state afterwards, so it does not change the training trajectory.

    Cost: one extra evaluation pass over the probe subset per validation, i.e. about
    ``probe_size / val_size`` times the cost of validation (a ``0.1`` fraction of a training set as large as
    ten times the validation set doubles validation time).

    Args:
        pairs: ``{name: (train_key, val_key)}`` or ``{name: (train_key, val_key, mode)}``, mode ``"min"``
            (default) or ``"max"``.
        criteria: ``{criterion: threshold}`` or ``{criterion: {pair: threshold}}`` with criteria ``"gap"``,
            ``"rel_gap"`` (above threshold ``patience`` checks in a row), ``"gl"``, ``"pq"`` (Prechelt's
            alpha), ``"up"`` (threshold = s). Defaults to ``{"gl": 5.0, "up": 3}``.
        action: ``"warn"``, ``"stop"``, or a callable ``(trainer, pl_module, report)``.
        warmup: number of checks at the start of training during which no alert is raised (values are still
            computed, logged and counted).
        patience: checks in a row a ``gap`` / ``rel_gap`` condition must hold.
        strip: ``k`` of Prechelt's P_k (train values of the last ``k`` checks).
        probe: ``None`` (use the logged train metrics), a fraction in ``(0, 1]`` of the training set, or a
            ``DataLoader``.
        probe_metrics: ``{pair: torchmetrics.Metric}`` used by the probe; other pairs use ``validation_step``.
        probe_forward: ``(pl_module, batch) -> (preds, target)`` for ``probe_metrics``.
        probe_seed: seed of the fixed random subset when ``probe`` is a fraction.
        sync_values: average the values over ranks before deciding (one all-reduce per check).
        verbose: print the summary table at the end of fit (rank zero).

    Example:
        >>> monitor = OverfittingMonitor(
        ...     pairs={"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc", "max")},
        ...     criteria={"gl": 5.0, "gap": {"acc": 0.15}},
        ...     warmup=2,
        ... )
        >>> monitor.state_key
        "OverfittingMonitor{'pairs': ['loss', 'acc'], 'criteria': ['gap', 'gl']}"
    """

    def __init__(
        self,
        pairs: dict[str, tuple[str, str] | tuple[str, str, str]],
        criteria: dict[str, float | dict[str, float]] | None = None,
        action: str | Callable[[pl.Trainer, pl.LightningModule, dict[str, Any]], None] = "warn",
        warmup: int = 0,
        patience: int = 1,
        strip: int = 5,
        probe: float | DataLoader | None = None,
        probe_metrics: dict[str, Metric] | None = None,
        probe_forward: Callable[[pl.LightningModule, Any], tuple[Any, Any]] | None = None,
        probe_seed: int = 0,
        sync_values: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(pairs, Mapping) or not pairs:
            raise ValueError(
                f"`pairs` must be a non-empty dict {{name: (train_key, val_key[, mode])}}, got {pairs!r}."
            )
        self.pairs: dict[str, tuple[str, str, str]] = {}
        for name, spec in pairs.items():
            spec = tuple(spec)
            if len(spec) not in (2, 3) or not all(isinstance(s, str) for s in spec):
                raise ValueError(
                    f"Pair {name!r} must be (train_key, val_key) or (train_key, val_key, mode), got {spec!r}."
                )
            mode = spec[2] if len(spec) == 3 else "min"
            if mode not in ("min", "max"):
                raise ValueError(f"Mode of pair {name!r} must be one of ['min', 'max'], got {mode!r}.")
            self.pairs[name] = (spec[0], spec[1], mode)
        if criteria is None:
            criteria = {"gl": 5.0, "up": 3}
        if not callable(action) and action not in _ACTIONS:
            raise ValueError(
                f"Unknown action {action!r}. Valid actions: {list(_ACTIONS)} or a callable "
                "(trainer, pl_module, report)."
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup` must be an integer >= 0 (checks without alerts), got {warmup!r}.")
        # validates criteria names, thresholds, patience and strip
        modes = {n: p[2] for n, p in self.pairs.items()}
        self._criteria = OverfittingCriteria(modes, criteria, patience, strip)
        if probe is not None and not isinstance(probe, DataLoader):
            if isinstance(probe, bool) or not isinstance(probe, (int, float)) or not 0 < probe <= 1:
                raise ValueError(
                    "`probe` must be None, a fraction in (0, 1] of the training set or a DataLoader, "
                    f"got {probe!r}."
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
                    f"`probe_metrics[{name!r}]` must be a torchmetrics.Metric, got {type(metric)}."
                )
        self.criteria = self._criteria.criteria
        self.action = action
        self.warmup = warmup
        self.patience = patience
        self.strip = strip
        self.probe = probe
        self.probe_metrics = probe_metrics
        self.probe_forward = probe_forward or _default_probe_forward
        self.probe_seed = probe_seed
        self.sync_values = sync_values
        self.verbose = verbose

        self.history: list[dict[str, Any]] = []
        self.in_episode = False
        self.num_episodes = 0
        self.stopped_epoch: int | None = None
        self._pending_val: dict[str, float] | None = None
        self._pending_probe: dict[str, float] | None = None
        self._probe_loader: DataLoader | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pairs=list(self.pairs), criteria=sorted(self.criteria))

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._probe_loader = None  # built lazily from this fit's training set
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
        if self.verbose and self.history:
            rank_zero_info(self.summary_table())

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "criteria": self._criteria.state_dict(),
            "history": [dict(h) for h in self.history],
            "in_episode": self.in_episode,
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
        self.in_episode = bool(state_dict["in_episode"])
        self.num_episodes = int(state_dict["num_episodes"])
        self.stopped_epoch = state_dict["stopped_epoch"]
        pending = state_dict.get("pending_val")
        self._pending_val = None if pending is None else {k: torch.tensor(v) for k, v in pending.items()}
        self._pending_probe = state_dict.get("pending_probe")

    # ------------------------------------------------------------------ logic

    def _check(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict[str, tuple[float, float]]
    ) -> None:
        reports: dict[str, CheckReport] = self._criteria.update(values)
        check = self._criteria.num_checks - 1
        fired = any(r.fired for r in reports.values())
        alert = fired and check >= self.warmup
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "check": check,
            "alert": alert,
            "pairs": {n: r.as_dict() for n, r in reports.items()},
        }
        self.history.append(entry)
        logs: dict[str, float] = {}
        for name, r in reports.items():
            logs[f"overfit/{name}_gap"] = r.gap
            logs[f"overfit/{name}_rel_gap"] = r.rel_gap
            logs[f"overfit/{name}_gl"] = r.gl
            if r.pq is not None:  # defined from the `strip`-th check on, on every rank alike
                logs[f"overfit/{name}_pq"] = r.pq
        logs["overfit/alert"] = float(alert)
        # The key set must be the same on every rank (each key is one collective). Values are identical on all
        # ranks when `sync_values`; "max" keeps them exact and silences the epoch-level sync warning.
        pl_module.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

        new_episode = alert and not self.in_episode
        self.in_episode = alert
        stop = False
        if new_episode:
            self.num_episodes += 1
            if callable(self.action):
                self.action(trainer, pl_module, entry)
            else:
                rank_zero_warn(self._message(entry), category=UserWarning)
                stop = self.action == "stop"
        if self.action == "stop":
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True
                self.stopped_epoch = trainer.current_epoch

    def _message(self, entry: dict[str, Any]) -> str:
        parts = []
        for name, r in entry["pairs"].items():
            if not r["fired"]:
                continue
            pq = "n/a" if r["pq"] is None else f"{r['pq']:.3g}"
            parts.append(
                f"{name}: train={r['train']:.4g} val={r['val']:.4g} gap={r['gap']:.4g} "
                f"(rel {r['rel_gap']:.3g}) GL={r['gl']:.3g}% best_val={r['best_val']:.4g} PQ={pq} "
                f"UP={r['up_count']} fired={r['fired']}"
            )
        what = "Stopping training. " if self.action == "stop" else ""
        return (
            f"OverfittingMonitor: the model is overfitting at epoch {entry['epoch']} (step {entry['step']}, "
            f"check {entry['check']}): " + "; ".join(parts) + f". {what}{_HINT}"
        )

    def summary_table(self) -> str:
        """Return the history as a text table (epoch, pair, train, val, gap, GL, criteria fired).

        Example:
            >>> monitor = OverfittingMonitor({"loss": ("train_loss", "val_loss")})
            >>> monitor.summary_table().splitlines()[0]
            'OverfittingMonitor summary'
        """
        lines = [
            "OverfittingMonitor summary",
            f"{'epoch':>5} {'pair':<12} {'train':>10} {'val':>10} "
            f"{'gap':>10} {'GL %':>8} {'PQ':>8} alert fired",
        ]
        for h in self.history:
            for name, r in h["pairs"].items():
                pq = "" if r["pq"] is None else f"{r['pq']:.3g}"
                lines.append(
                    f"{h['epoch']:>5} {name:<12} {r['train']:>10.4g} {r['val']:>10.4g} {r['gap']:>10.4g} "
                    f"{r['gl']:>8.3g} {pq:>8} {'yes' if h['alert'] else 'no':>5} {','.join(r['fired'])}"
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
            batch_size=train_loader.batch_size or 1,
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
