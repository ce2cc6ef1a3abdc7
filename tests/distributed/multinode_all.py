"""One node of a 2-node x 2-process DDP job on this machine (CPU, gloo), every callback and RegularizedModule.

Usage: ``NODE_RANK=0|1 MASTER_ADDR=127.0.0.1 MASTER_PORT=P python multinode_all.py OUT_DIR``, started once
per node (``tests/distributed/test_multinode.py`` starts both; ``launch_multinode`` below is its launcher).
Lightning's ``ddp`` launcher on each node starts that node's 2 local ranks: world size 4, global ranks 0-3,
local ranks 0, 1, 0, 1.

Two fits in one launch: ``full``, which early-stops on patience and restores its best epoch, writing a
checkpoint at every epoch end; ``resumed``, a new Trainer resumed from the end of epoch 1 of ``full``.
Each rank's validation loss is its own shard's loss times ``1 + global_rank`` and is not synced, so the
ranks see different values and only the callbacks' agreement makes them decide alike. The ranks' random
generators are made to differ before training (``Diverge``), so a rank that restored another rank's RNG
states on resume would draw other DropPath masks. Every checkpoint write goes through ``RecordingIO``,
which notes the writing rank. Each rank writes ``rank{global_rank}.pt`` with what it saw.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import (
    DropPath,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    RegularizedModule,
    ReproducibleResume,
    StochasticDepthScheduler,
)

# Training targets are scaled per epoch, validation targets are not: validation loss falls until epoch 2
# or 3, then rises, so patience stops the run before max_epochs and the best epoch is not the last.
SCALES = [3.0, 1.6, 1.1, 1.0, 1.8, 2.6, 3.4, 4.2]
MAX_EPOCHS = len(SCALES)
PATIENCE = 2
FREEZE_EPOCH = 1  # BatchNorm frozen from epoch 1: DDP's buffer broadcast then keeps the ranks' buffers equal
RESUME_FROM = "epoch=1.ckpt"


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]]))


class Net(RegularizedModule):
    """BatchNorm stem, a residual block with a DropPath, a linear head; SGD with decay groups."""

    def __init__(self) -> None:
        super().__init__(
            optimizer=partial(torch.optim.SGD, momentum=0.5), lr=0.02, weight_decay=1e-4, verbose=0
        )
        self.stem = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.fc = nn.Linear(16, 16)
        self.drop_path = DropPath(0.0)
        self.head = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.head(h + self.drop_path(torch.relu(self.fc(h))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y * SCALES[self.current_epoch])
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y) * (1.0 + self.global_rank))  # per rank, not synced

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_data(128, 0), batch_size=8)  # Lightning adds the DistributedSampler: 4 per rank

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_data(64, 1), batch_size=16)


class Diverge(Callback):
    """Make every rank's torch generator differ (rank r draws r + 1 numbers) before training starts."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.rand(trainer.global_rank + 1)


class Recorder(Callback):
    """Per check: epoch, the rank's own value, the agreed best and the stop decision; weights; RNG states."""

    def __init__(self, es: EarlyStopping) -> None:
        self.es = es
        self.checks: list[dict[str, Any]] = []
        self.weights: dict[int, dict[str, Tensor]] = {}
        self.rng_at_save: dict[int, Tensor] = {}
        self.rng_at_fit_start: Tensor | None = None
        self.ranks: dict[str, int] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ranks = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rng_at_fit_start = torch.get_rng_state()  # after ReproducibleResume's restore (listed before)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.rng_at_save[trainer.current_epoch] = torch.get_rng_state()  # what ReproducibleResume saved

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after EarlyStopping's check (this callback comes after it in the list)
        self.checks.append(
            {
                "epoch": trainer.current_epoch,
                "own_val_loss": float(trainer.callback_metrics["val_loss"]),
                "best_score": float(self.es.best_score),
                "wait_count": self.es.wait_count,
                "should_stop": bool(trainer.should_stop),
                "grad_norm": float(trainer.callback_metrics["grad/norm_total"]),
                "drop_rate": float(pl_module.drop_path.p),
                "bn_training": pl_module.stem[1].training,
            }
        )


class RecordingIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, noting which global rank wrote which file."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
        with open(self.out / "writes.txt", "a") as f:  # noqa: PTH123
            f.write(f"{rank} {Path(path).relative_to(self.out)}\n")
        super().save_checkpoint(checkpoint, path, storage_options)


def fit(out: Path, tag: str, ckpt_path: str | None = None) -> tuple[L.Trainer, Net, Recorder, EarlyStopping]:
    L.seed_everything(0, verbose=False)
    es = EarlyStopping("val_loss", patience=PATIENCE, check_on_train_epoch_end=True)
    recorder = Recorder(es)
    callbacks = [
        Diverge(),
        ReproducibleResume(),
        FreezeBatchNorm(epoch=FREEZE_EPOCH),
        StochasticDepthScheduler(max_rate=0.3, rule="uniform", schedule="constant"),
        GradientMonitor(log_every_n_steps=1),
        GradientClipping("zclip", zclip_warmup_steps=4),
        OverfittingMonitor({"loss": ("train_loss", "val_loss")}, verbose=2),
        es,
        recorder,
        ModelCheckpoint(out / f"ckpt_{tag}", filename="{epoch}", save_top_k=-1, every_n_epochs=1),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        num_nodes=2,
        strategy="ddp",
        max_epochs=MAX_EPOCHS,
        callbacks=callbacks,
        plugins=[RecordingIO(out)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )
    model = Net()
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model, recorder, es


def main(out: Path) -> None:
    torch.set_num_threads(1)
    trainer, model, rec, es = fit(out, "full")
    result: dict[str, Any] = {
        **rec.ranks,
        "env_node_rank": os.environ.get("NODE_RANK"),
        "checks": rec.checks,
        "validated_weights": rec.weights,
        "rng_at_save": rec.rng_at_save,
        "best_epoch": es.best_epoch,
        "stopped_epoch": es.stopped_epoch,
        "stopping_reason": es.stopping_reason.name,
        "restored": es.restored,
        "final_weights": {k: v.clone() for k, v in model.state_dict().items()},
    }
    trainer, model, rec, es = fit(out, "resumed", ckpt_path=str(out / "ckpt_full" / RESUME_FROM))
    result["resumed"] = {
        "checks": rec.checks,
        "rng_at_fit_start": rec.rng_at_fit_start,
        "restored_at": next(c for c in trainer.callbacks if isinstance(c, ReproducibleResume)).restored_at,
        "best_epoch": es.best_epoch,
        "stopped_epoch": es.stopped_epoch,
        "final_weights": {k: v.clone() for k, v in model.state_dict().items()},
    }
    torch.save(result, out / f"rank{result['global_rank']}.pt")


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_multinode(out: Path, timeout: float = 180) -> dict[int, str]:
    """Start node 1 in the background and node 0 in the foreground, each in its own process group.

    Returns:
        node rank -> everything that node printed (its launcher and its two local ranks).

    Raises:
        AssertionError: a node exited non-zero or ran past ``timeout`` (its whole process group is killed).
    """
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH", "")]))
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"
    )
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        env.pop(var, None)  # a node must not think it is already a launched rank or a SLURM task
    logs = {n: open(out / f"node{n}.log", "w+") for n in (1, 0)}  # noqa: PTH123, SIM115
    procs = {
        n: subprocess.Popen(
            [sys.executable, __file__, str(out)],
            env={**env, "NODE_RANK": str(n)},
            cwd=str(out),
            stdout=logs[n],
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills the node and its local ranks
        )
        for n in (1, 0)
    }
    failures = []
    deadline = time.monotonic() + timeout
    try:
        for n in (0, 1):
            try:
                code = procs[n].wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = "timeout"
            if code != 0:
                failures.append(f"node {n}: exit {code}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    text = {}
    for n, f in logs.items():
        f.seek(0)
        text[n] = f.read()
        f.close()
    if failures:
        raise AssertionError(
            "; ".join(failures) + "".join(f"\n--- node {n} ---\n{t[-6000:]}" for n, t in sorted(text.items()))
        )
    return text


if __name__ == "__main__":
    main(Path(sys.argv[1]))
