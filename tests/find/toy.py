"""A tiny classifier and its data for the finder's tests: 3 noisy Gaussian classes, an MLP, a few epochs.

Importable by the worker subprocesses (``python -m lightning_reg.find --config ...`` with
``model.class_path: tests.find.toy.ToyNet``).
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import RegularizedModule
from lightning_reg.presets import Preset


class ToyData(L.LightningDataModule):
    """Three Gaussian classes in 8 dimensions, 20 % of the training labels flipped; no test data.

    ``test_dataloader`` raises: the finder must never look at test data.
    """

    def __init__(self, n_train: int = 64, n_val: int = 96, batch_size: int = 32, split_seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(split_seed)
        centers = torch.randn(3, 8, generator=g)
        n = n_train + n_val
        y = torch.randint(0, 3, (n,), generator=g)
        x = centers[y] + 1.2 * torch.randn(n, 8, generator=g)
        noisy = y[:n_train].clone()
        flip = torch.rand(n_train, generator=g) < 0.2
        noisy[flip] = torch.randint(0, 3, (int(flip.sum()),), generator=g)
        self.train_set = TensorDataset(x[:n_train], noisy)
        self.val_set = TensorDataset(x[n_train:], y[n_train:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        raise AssertionError("the finder must never use test data")


class ToyNet(RegularizedModule):
    """A two-layer MLP on ``RegularizedModule``; ``step_sleep`` slows training (to kill a worker mid-run)."""

    def __init__(
        self,
        hidden: int = 32,
        dropout: float = 0.0,
        lr: float = 0.02,
        weight_decay: float | None = None,
        preset: str | Preset | None = None,
        num_classes: int = 3,
        step_sleep: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, preset=preset, num_classes=num_classes, verbose=0)
        self.net = nn.Sequential(
            nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        self.step_sleep = step_sleep

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        logits = self(x)
        loss = self.mixing_loss(logits, y) if y.ndim == 2 else F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), on_step=False, on_epoch=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
