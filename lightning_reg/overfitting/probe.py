"""The eval-mode probe: a LightningModule measured on a fixed part of its training data, as in validation.

Training metrics are measured with dropout, augmentation and batch mixing on, so a train/validation gap
built from them mixes two things: memorization and the regularizers' own noise. ``EvalModeProbe`` measures
the training side the way validation is measured (eval mode, no gradients, the module's own
``validation_step`` or given torchmetrics objects) on a fixed subset of the training data, so the gap
compares like with like. ``OverfittingMonitor(probe=...)`` runs one after every validation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric

from lightning_reg._shared.validation import check_callable, check_int

__all__ = ["EvalModeProbe"]

_Forward = Callable[[pl.LightningModule, Any], tuple[Any, Any]]


def _default_forward(pl_module: pl.LightningModule, batch: Any) -> tuple[Any, Any]:
    """Split ``batch`` as ``(x, y, ...)`` and return ``(pl_module(x), y)``."""
    return pl_module(batch[0]), batch[1]


def _sum_dtype(device: torch.device) -> torch.dtype:
    """Float64 for the few running sums, except on MPS, which has no float64."""
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


def _snapshot_metric(metric: Metric) -> dict[str, Any]:
    """Copy a torchmetrics object's accumulated state (tensors and list states)."""
    state = {
        k: v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v]
        for k, v in metric.metric_state.items()
    }
    return {"state": state, "update_count": metric._update_count, "computed": metric._computed}


def _restore_metric(metric: Metric, snapshot: dict[str, Any]) -> None:
    """Put back a state copied by ``_snapshot_metric``."""
    for k, v in snapshot["state"].items():
        setattr(metric, k, v)
    metric._update_count = snapshot["update_count"]
    metric._computed = snapshot["computed"]


class _Sums:
    """Batch-size-weighted sums of logged values, one per name, kept on the device (no host sync)."""

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.device = device
        self.dtype = _sum_dtype(device)
        zero = torch.zeros((), dtype=self.dtype, device=device)
        self.sums = {n: zero for n in names}
        self.counts = {n: 0 for n in names}

    def add(self, name: str, value: Any, size: int) -> None:
        value = torch.as_tensor(value, device=self.device).detach().to(self.dtype)
        self.sums[name] = self.sums[name] + value * size
        self.counts[name] += size

    def means(self, names: Sequence[str], trainer: pl.Trainer) -> dict[str, float]:
        """Return the means over every rank's batches: one all-reduce and one host sync for all names."""
        if not names:
            return {}
        counts = torch.tensor([self.counts[n] for n in names], dtype=self.dtype, device=self.device)
        totals = torch.cat([torch.stack([self.sums[n] for n in names]), counts])
        if trainer.world_size > 1:
            totals = trainer.strategy.reduce(totals, reduce_op="sum")
        t = totals.tolist()
        k = len(names)
        return {n: t[i] / t[k + i] if t[k + i] else math.nan for i, n in enumerate(names)}


class EvalModeProbe:
    """Measure a LightningModule in eval mode, without gradients, on a fixed subset of its training data.

    Each ``measure`` call evaluates the module on the probe data and returns one value per name:

    * names in ``metrics``: the torchmetrics object is reset, updated with ``forward(pl_module, batch)``
      (default ``(pl_module(batch[0]), batch[1])``) on every batch and computed (synced by torchmetrics
      across ranks);
    * names in ``keys``: the module's own ``validation_step`` runs on every batch with ``self.log``
      captured (nothing reaches the loggers); the value it logs under the name's key, averaged over the
      probe data weighted by batch size (and over ranks), is the result. A torchmetrics object logged
      there accumulates the probe batches on a clean state and is computed instead.

    Nothing of the run changes: train/eval modes, the global random state (a DataLoader iterator draws a
    seed) and the accumulated states of the module's own torchmetrics objects are put back afterwards.

    The data: a ``DataLoader`` is evaluated as given on every rank; a fraction in ``(0, 1]`` takes that
    share of the training loader's dataset, chosen once with ``seed``, sharded across ranks, in batches of
    the training loader's size (also when it is built with a ``batch_sampler``). The subset is built at the
    first ``measure`` and kept until ``reset``.

    Args:
        data: a fraction in ``(0, 1]`` of the training set, or a ``DataLoader``.
        keys: ``{name: key}`` of the values ``validation_step`` logs, measured through it.
        metrics: ``{name: torchmetrics.Metric}`` measured with ``forward``.
        forward: ``(pl_module, batch) -> (preds, target)`` for ``metrics``.
        seed: seed of the fixed random subset when ``data`` is a fraction.

    Raises:
        TypeError: ``data`` of another type, a metric that is not a torchmetrics ``Metric``, a ``forward``
            that is not callable.
        ValueError: a fraction outside ``(0, 1]``, a name in both ``keys`` and ``metrics``, nothing to
            measure.

    Example:
        >>> probe = EvalModeProbe(0.1, keys={"loss": "val_loss"})
        >>> probe.names
        ['loss']
    """

    def __init__(
        self,
        data: float | DataLoader,
        keys: Mapping[str, str] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        forward: _Forward | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(data, DataLoader):
            bad_type = isinstance(data, bool) or not isinstance(data, (int, float))
            if bad_type or not 0 < data <= 1:
                raise (TypeError if bad_type else ValueError)(
                    f"`data` must be a fraction in (0, 1] of the training set or a DataLoader; got {data!r}."
                )
        self.keys = dict(keys or {})
        self.metrics = dict(metrics or {})
        for name, metric in self.metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(f"`metrics[{name!r}]` must be a torchmetrics.Metric; got {type(metric)}.")
        both = sorted(set(self.keys) & set(self.metrics))
        if both or not (self.keys or self.metrics):
            raise ValueError(
                f"each name must be in exactly one of `keys` and `metrics`; got keys {sorted(self.keys)}, "
                f"metrics {sorted(self.metrics)}."
            )
        check_callable("forward", forward, none_ok=True)
        check_int("seed", seed)
        self.data = data
        self.forward: _Forward = forward or _default_forward
        self.seed = seed
        self._loader: DataLoader | None = None

    @property
    def names(self) -> list[str]:
        """The names ``measure`` returns values for: ``metrics``' then ``keys``'.

        Example:
            >>> EvalModeProbe(1.0, keys={"loss": "val_loss"}).names
            ['loss']
        """
        return [*self.metrics, *self.keys]

    def reset(self) -> None:
        """Forget the probe subset (a new ``fit`` may bring another training set).

        Example:
            >>> EvalModeProbe(0.5, keys={"loss": "val_loss"}).reset()
        """
        self._loader = None

    def to(self, device: torch.device | str) -> EvalModeProbe:
        """Move the metric objects to ``device`` (the module's); returns ``self``.

        Example:
            >>> EvalModeProbe(0.5, keys={"loss": "val_loss"}).to("cpu").names
            ['loss']
        """
        for metric in self.metrics.values():
            metric.to(device)
        return self

    def loader(self, trainer: pl.Trainer) -> DataLoader:
        """Return the probe's DataLoader (built from the training loader at the first call for a fraction).

        Args:
            trainer: the Trainer whose training loader and ranks define the subset.

        Raises:
            MisconfigurationException: ``data`` is a fraction and the training data is not one DataLoader
                over a dataset with a length.

        Example:
            >>> from torch.utils.data import TensorDataset
            >>> given = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)
            >>> EvalModeProbe(given, keys={"loss": "val_loss"}).loader(trainer=None) is given
            True
        """
        if isinstance(self.data, DataLoader):
            return self.data
        if self._loader is None:
            self._loader = self._subset_loader(trainer, self.data)
        return self._loader

    def _subset_loader(self, trainer: pl.Trainer, fraction: float) -> DataLoader:
        train_loader = trainer.train_dataloader
        if not isinstance(train_loader, DataLoader):
            raise MisconfigurationException(
                "EvalModeProbe: a fraction of the training set needs a single training DataLoader (got "
                f"{type(train_loader).__name__}); pass a DataLoader instead of the fraction "
                "(`OverfittingMonitor(probe=<DataLoader>)`)."
            )
        dataset = train_loader.dataset
        if not isinstance(dataset, Sized):
            raise MisconfigurationException(
                "EvalModeProbe: a fraction of the training set needs a dataset with a length (got "
                f"{type(dataset).__name__}, which has no `__len__`); pass a DataLoader instead of the "
                "fraction (`OverfittingMonitor(probe=<DataLoader>)`)."
            )
        n = len(dataset)
        size = max(1, round(float(fraction) * n))
        generator = torch.Generator().manual_seed(self.seed)
        drawn = torch.randperm(n, generator=generator)[:size].sort().values
        indices = drawn[trainer.global_rank :: trainer.world_size].tolist()  # shard across ranks
        return DataLoader(
            Subset(dataset, indices),
            batch_size=_loader_batch_size(train_loader),
            shuffle=False,
            collate_fn=train_loader.collate_fn,
            num_workers=0,
        )

    @torch.no_grad()
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Evaluate ``pl_module`` on the probe data; return ``{name: value}`` for every name.

        Args:
            trainer: the running Trainer (its strategy moves batches and reduces across ranks).
            pl_module: the module, evaluated unwrapped (not under sharded strategies).

        Returns:
            One float per name, identical on every rank.

        Raises:
            MisconfigurationException: ``validation_step`` did not log a key of ``keys``.

        Example:
            >>> import lightning as L
            >>> from torch import nn
            >>> from torch.utils.data import TensorDataset
            >>> class Net(L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.layer, self.drop = nn.Linear(2, 1), nn.Dropout(0.5)
            ...     def validation_step(self, batch, batch_idx):
            ...         self.log("val_loss", self.drop(self.layer(batch[0])).pow(2).mean())
            >>> net = Net()
            >>> _ = nn.init.constant_(net.layer.weight, 0.5), nn.init.zeros_(net.layer.bias)
            >>> data = DataLoader(TensorDataset(torch.ones(6, 2)), batch_size=4)
            >>> trainer = L.Trainer(accelerator="cpu", logger=False)
            >>> EvalModeProbe(data, keys={"loss": "val_loss"}).measure(trainer, net), net.training
            ({'loss': 1.0}, True)
        """
        loader = self.loader(trainer)
        sums = _Sums(list(self.keys), pl_module.device)
        logged_metrics: dict[str, Metric] = {}
        with _sandbox(pl_module, capture_log=bool(self.keys)) as captured:
            for metric in self.metrics.values():
                metric.reset()
            for batch_idx, batch in enumerate(loader):
                batch = trainer.strategy.batch_to_device(batch)
                self._update_metrics(pl_module, batch)
                if self.keys:
                    captured.clear()
                    pl_module.validation_step(batch, batch_idx)
                    self._add_logged(captured, batch, sums, logged_metrics)
            out = {n: float(m.compute()) for n, m in [*self.metrics.items(), *logged_metrics.items()]}
            for metric in self.metrics.values():
                metric.reset()
        out.update(sums.means([n for n in self.keys if n not in logged_metrics], trainer))
        return {n: out[n] for n in self.names}

    def _update_metrics(self, pl_module: pl.LightningModule, batch: Any) -> None:
        if self.metrics:
            preds, target = self.forward(pl_module, batch)
            for metric in self.metrics.values():
                metric.update(preds, target)

    def _add_logged(
        self, captured: Mapping[str, Any], batch: Any, sums: _Sums, logged_metrics: dict[str, Metric]
    ) -> None:
        for name, key in self.keys.items():
            if key not in captured:
                raise MisconfigurationException(
                    f"EvalModeProbe: `validation_step` did not log {key!r} (it logged {sorted(captured)})."
                )
            value, size = captured[key]
            if isinstance(value, Metric):  # it accumulates the probe batches itself
                logged_metrics[name] = value
            else:
                sums.add(name, value, size or _batch_size(batch))


@contextmanager
def _sandbox(pl_module: pl.LightningModule, capture_log: bool) -> Iterator[dict[str, Any]]:
    """Run in eval mode on a forked random state; with ``capture_log``, ``self.log`` fills the yielded dict.

    The module's own torchmetrics objects start clean (a ``validation_step`` updating them accumulates the
    probe batches only) and get their states back afterwards, as do the modules' train/eval modes.
    """
    device = pl_module.device
    modes = {m: m.training for m in pl_module.modules()}
    own_metrics = [m for m in pl_module.modules() if isinstance(m, Metric)] if capture_log else []
    snapshots = [_snapshot_metric(m) for m in own_metrics]
    captured: dict[str, Any] = {}

    def capture(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        captured[name] = (value, kwargs.get("batch_size"))

    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        pl_module.eval()
        if capture_log:
            pl_module.log = capture  # type: ignore[method-assign]  # deliberate patch, deleted in `finally`
        try:
            for metric in own_metrics:
                metric.reset()
            yield captured
        finally:
            if capture_log:
                del pl_module.log
            for metric, snapshot in zip(own_metrics, snapshots):
                _restore_metric(metric, snapshot)
            for module, was_training in modes.items():
                module.train(was_training)
