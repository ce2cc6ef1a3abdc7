"""A small run with every stochastic regularizer on, shared by the in-process and the DDP resume tests.

Random draws come from every global generator: the stateful loader shuffles with torch's generator at each
epoch start (on one process), the validation ``DataLoader`` draws its iterator seed from it, scheduled
``DropPath`` and ``nn.Dropout`` draw masks, ``BatchMixer(seed=None)`` takes its seed from torch and mixes
with Mixup, and the
training step adds input jitter from numpy's and Python's global generators. Nothing is reseeded after
``seed_everything`` at the start of a run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import BatchMixer, BatchMixingMixin, ReproducibleResume, StochasticDepthScheduler
from tests.helpers import ResidualBlock, fast_trainer, teacher_data

IN, WIDTH, CLASSES = 8, 16, 4
BATCH, N_TRAIN, N_VAL = 8, 64, 32
EPOCHS = 6
STEPS_PER_EPOCH = N_TRAIN // BATCH  # one process; each of 2 DDP ranks gets half of the batches
MID_STEP = 19  # single process: epoch 2, batch 3 of 8 (under 2 ranks: 4 steps per epoch, epoch 4, batch 3)


def make_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return teacher_data(N_TRAIN, N_VAL, IN, CLASSES)


class ShuffledBatches:
    """A stateful loader that reshuffles at every epoch start.

    On one process it draws the permutation from torch's global generator, as ``DataLoader(shuffle=True)``
    does. Under DDP every rank must use the same permutation (then takes every ``world``-th batch), so it
    shuffles with a generator seeded by the epoch that Lightning passes to ``sampler.set_epoch``, as
    ``DistributedSampler`` does (Lightning saves the loader state of rank 0 only, so the permutation must
    not depend on the rank's generator). It saves the permutation and the position (Lightning's
    ``state_dict``/``load_state_dict`` protocol, used for mid-epoch checkpoints only), so a mid-epoch
    checkpoint resumes the same epoch.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self._perm: Tensor | None = None
        self._pos = 0
        self._epoch = 0
        self._resume: dict[str, Any] | None = None
        self.sampler = self  # Lightning calls ``loader.sampler.set_epoch(epoch)`` at every epoch start

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size) // self._shard()[1]

    def __iter__(self):
        rank, world = self._shard()
        resume, self._resume = self._resume, None
        if resume is not None and resume["pos"] > 0:  # mid-epoch: same permutation, same position
            self._perm, start = torch.tensor(resume["perm"]), resume["pos"]
        else:
            generator = torch.Generator().manual_seed(self._epoch) if world > 1 else None
            self._perm, start = torch.randperm(len(self.x), generator=generator), 0
        batches = self._perm.split(self.batch_size)[rank::world]
        for i in range(start, len(batches)):
            self._pos = i + 1
            yield self.x[batches[i]], self.y[batches[i]]

    def state_dict(self) -> dict[str, Any]:
        perm = self._perm.tolist() if self._perm is not None else []
        return {"perm": perm, "pos": self._pos % len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)


class Net(BatchMixingMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(IN, WIDTH)
        self.blocks = nn.Sequential(*[ResidualBlock(WIDTH, norm=False) for _ in range(3)])
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(WIDTH, CLASSES)
        self.batch_mixer = BatchMixer(num_classes=CLASSES, mixup_alpha=0.4, prob=0.8, seed=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.blocks(self.stem(x))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        x = x + 0.05 * float(np.random.randn()) + 0.05 * random.random()  # numpy and Python draws
        return self.mixing_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def run(
    out: Path,
    *,
    ckpt_path: str | None = None,
    resume_rng: bool = True,
    save: bool = False,
    callbacks_extra: list[Callback] | None = None,
    **trainer_kwargs: Any,
) -> tuple[Net, L.Trainer]:
    """One run: ``seed_everything(0)`` once, then fit (optionally from a checkpoint); nothing reseeds."""
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    x, y, xv, yv = make_data()
    model = Net()
    callbacks: list[Callback] = [
        StochasticDepthScheduler(
            max_rate=0.3,
            schedule="warmup",
            cutoff=0.5,
            cutoff_unit="fraction",
            include_dropout=True,
            verbose=0,
        )
    ]
    if resume_rng:
        callbacks.append(ReproducibleResume(verbose=0))
    callbacks += callbacks_extra or []
    if save:
        callbacks += [
            ModelCheckpoint(out, "ep{epoch}", save_top_k=-1, auto_insert_metric_name=False),
            ModelCheckpoint(
                out, "st{step}", save_top_k=-1, every_n_train_steps=MID_STEP, auto_insert_metric_name=False
            ),
        ]
    settings: dict[str, Any] = dict(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=save,
        num_sanity_val_steps=1,
        deterministic=True,
    )
    trainer = fast_trainer(callbacks=callbacks, **{**settings, **trainer_kwargs})
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    trainer.fit(model, ShuffledBatches(x, y, BATCH), val, ckpt_path=ckpt_path)
    return model, trainer


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
