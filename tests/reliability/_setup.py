"""Shared pieces of the reliability suite: a tiny model using every regularizer, data, callbacks, comparisons.

Imported by the in-process tests and by the standalone scripts (which run in fresh processes).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric

from lightning_reg import (
    BatchMixer,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    ProximalL1,
    RegularizedModule,
    StochasticDepthScheduler,
    WarmupCosineLR,
)
from lightning_reg.penalties import WeightPenalty
from tests import helpers
from tests.helpers import ResidualBlock, teacher_data

IN, WIDTH, CLASSES = 8, 16, 4
BATCH, N_TRAIN, N_VAL = 8, 64, 48
SEED = 0


def make_data(seed: int = SEED) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Noisy teacher labels: a small MLP overfits them after a few epochs (the best epoch is not the last)."""
    return teacher_data(N_TRAIN, N_VAL, IN, CLASSES, noise=1.5, seed=seed)


class ResumableBatches:
    """Fixed-order training batches implementing Lightning's ``state_dict``/``load_state_dict`` protocol.

    Lightning resumes a mid-epoch checkpoint with a fresh iterator unless the loader is stateful; then the
    resumed run would see the first batches of the epoch again and could not match the uninterrupted run.
    Lightning's fetcher does not prefetch from an iterable with ``__len__``, so the batches yielded are the
    batches consumed.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.n = math.ceil(len(x) / batch_size)
        self._skip = 0
        self._yielded = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        start, self._skip = self._skip, 0
        self._yielded = start
        for i in range(start, self.n):
            self._yielded = i + 1
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self.x[sl], self.y[sl]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self._yielded % self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state["consumed"])


class NanMean(Metric):
    """Mean of the values seen, NaN and inf included (``MeanMetric(nan_strategy="disable")`` on every
    torchmetrics release: "disable" exists from torchmetrics 1.7, older ones can only drop or replace NaN).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor) -> None:
        self.total += value.sum()
        self.count += value.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class Net(RegularizedModule):
    """Every regularizer at once: decay groups, warm-up cosine LR, L2 penalty, mixup, BatchNorm, DropPath.

    ``fault`` injects a fault: ``{"kind": "nan_loss" | "inf_grad" | "nan_val" | "missing_val",
    "step"/"epoch": k, "rank": r}`` (``rank`` None: every rank). Seeds are set per batch
    (``seed + global_step``) so that a resumed run draws the same DropPath masks as the uninterrupted one.
    """

    def __init__(self, fault: dict[str, Any] | None = None, mixer: bool = True, penalty: bool = True) -> None:
        super().__init__(
            optimizer=partial(torch.optim.SGD, momentum=0.9),
            lr=0.3,
            weight_decay=1e-3,
            lr_scheduler=partial(WarmupCosineLR, warmup_steps=4),  # total from the Trainer
            weight_penalty=WeightPenalty(l2=1e-3) if penalty else None,
            batch_mixer=BatchMixer(num_classes=CLASSES, mixup_alpha=0.4, prob=0.5, seed=SEED)
            if mixer
            else None,
        )
        self.fault = fault or {}
        self.stem = nn.Sequential(nn.Linear(IN, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(WIDTH) for _ in range(3)])
        self.head = nn.Linear(WIDTH, CLASSES)
        # Lightning does not checkpoint its epoch accumulators of logged values: after a mid-epoch resume a
        # plain ``self.log(..., on_epoch=True)`` averages only the batches after the resume. A persistent
        # torchmetrics state is part of the module's state_dict, so the epoch mean survives the resume.
        self.train_loss_mean = NanMean()
        self.train_loss_mean.persistent(True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def _fault_here(self, kind: str, key: str, value: int) -> bool:
        f = self.fault
        return (
            f.get("kind") == kind
            and value in (f[key] if isinstance(f.get(key), (list, tuple)) else [f.get(key)])
            and f.get("rank") in (None, self.global_rank)
        )

    def on_train_epoch_start(self) -> None:
        # An end-of-epoch checkpoint holds the finished epoch's accumulators; a mid-epoch resume gets no
        # ``on_train_epoch_start`` and so keeps the partial epoch's.
        self.train_loss_mean.reset()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(1000 + self.trainer.global_step)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.mixing_loss(self(x), y) if self.batch_mixer is not None else F.cross_entropy(self(x), y)
        if self._fault_here("nan_loss", "step", self.global_step):
            loss = loss * float("nan")
        self.train_loss_mean.update(loss.detach())
        self.log("train_loss", self.train_loss_mean, on_step=False, on_epoch=True)
        return loss

    def on_after_backward(self) -> None:
        if self._fault_here("inf_grad", "step", self.global_step):
            self.head.weight.grad[0, 0] = float("inf")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self._fault_here("nan_val", "epoch", self.current_epoch):
            loss = loss * float("nan")
        if not self._fault_here("missing_val", "epoch", self.current_epoch):
            self.log("val_loss", loss, sync_dist=True)


def train_loader(resumable: bool = True) -> Any:
    x, y, _, _ = make_data()
    if resumable:
        return ResumableBatches(x, y, BATCH)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def val_loader() -> DataLoader:
    _, _, xv, yv = make_data()
    return DataLoader(TensorDataset(xv, yv), batch_size=N_VAL)


def all_callbacks(patience: int = 100, skip_nonfinite: bool = True) -> list[Callback]:
    """One instance of every callback of the library (``GradientClipping`` with the adaptive AutoClip)."""
    cbs: list[Callback] = [
        EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
        StochasticDepthScheduler(max_rate=0.3, schedule="warmup", cutoff=10, cutoff_unit="step"),
        OverfittingMonitor(
            {"loss": ("train_loss", "val_loss")}, criteria={"gl": 2.0, "up": 2}, verbose=False
        ),
        FreezeBatchNorm(epoch=3),
        ProximalL1(l1=1e-3),
        GradientMonitor(log_every_n_steps=1, log_ratios=True),
        GradientClipping("autoclip", percentile=90.0, history_size=16, skip_nonfinite=skip_nonfinite),
    ]
    return cbs


def fast_trainer(**kwargs: Any) -> L.Trainer:
    """The shared fast Trainer: one CPU process, deterministic, 5 epochs, logging every step (overridable)."""
    settings = dict(accelerator="cpu", devices=1, max_epochs=5, deterministic=True, log_every_n_steps=1)
    return helpers.fast_trainer(**{**settings, **kwargs})


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Recursive exact equality (``torch.equal`` for tensors; NaN equals NaN in floats)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert isinstance(a, Tensor) and isinstance(b, Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}"
        assert torch.equal(a, b) or (
            a.is_floating_point()
            and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        ), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
