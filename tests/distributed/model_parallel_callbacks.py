"""Every callback and the mixin under Lightning's ModelParallelStrategy (FSDP2) on 2 CPU ranks, against DDP.

Usage: ``python model_parallel_callbacks.py OUT_DIR``. One launch (2 gloo processes), four fits of the same
model, data and callbacks:

1. ``ddp``: the reference, Lightning's DDPStrategy;
2. ``mp``: Lightning's ``ModelParallelStrategy`` with ``fully_shard`` on every block (data parallel 2,
   tensor parallel 1), through a test-only subclass (Lightning's CPU check looks at the exact class); it
   writes a distributed checkpoint at the end of every epoch;
3. ``mp_resumed``: ModelParallel again, resumed from the end of epoch 2 of the ``mp`` run;
4. ``fsdp``: Lightning's ``FSDPStrategy`` (FSDP1) through a CPU subclass; FSDP1 needs ``device_id=cpu``,
   which the strategy does not pass, so the model wraps its own modules in ``configure_model`` (the
   strategy leaves an already wrapped model as it is). An error is recorded instead of raised.

Every rank writes ``rank{r}.pt``: per fit, the metrics logged at every step (rank 0's logger), the
callbacks' decisions and states, the optimizer's parameter groups (names and settings), the full weights
after every validation and at the end of training (before and after EarlyStopping's restore).
Started by ``tests/distributed/test_model_parallel.py``.
"""

from __future__ import annotations

import copy
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_reg import (
    BatchMixer,
    DropPath,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    ProximalL1,
    RegularizedModule,
    ReproducibleResume,
    StochasticDepthScheduler,
)
from lightning_reg.penalties import WeightPenalty
from tests.helpers import ResidualBlock, end_process_group, fast_trainer, teacher_data  # noqa: E402
from tests.memory_logger import MemoryLogger  # noqa: E402

IN, WIDTH, CLASSES = 8, 16, 4
N_TRAIN, N_VAL, BATCH = 64, 48, 8  # 2 ranks: 4 optimizer steps per epoch
MAX_EPOCHS = 8
FREEZE_EPOCH = 1


class CPUModelParallel(ModelParallelStrategy):
    """Test-only: Lightning refuses these strategies without a GPU only for the exact classes."""


class CPUFSDP(FSDPStrategy):
    """Test-only FSDP1 on CPU; the model wraps itself in ``configure_model`` (see ``Net``)."""


def make_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return teacher_data(N_TRAIN, N_VAL, IN, CLASSES, noise=2.0)


class Net(RegularizedModule):
    """Decay groups, an L2 penalty (PenaltyMixin), Mixup (BatchMixingMixin), BatchNorm, DropPath, dropout."""

    def __init__(self) -> None:
        super().__init__(
            optimizer=partial(torch.optim.SGD, momentum=0.9),
            lr=0.2,
            weight_decay=1e-3,
            weight_penalty=WeightPenalty(l2=1e-3),
            batch_mixer=BatchMixer(num_classes=CLASSES, mixup_alpha=0.4, prob=0.5, seed=0),
        )
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Linear(IN, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(WIDTH) for _ in range(3)])
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(WIDTH, CLASSES)

    def configure_model(self) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):  # FSDP2: shard every block, then the root
            from lightning_reg._shared.torch_compat import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for module in (self.stem, *self.blocks, self.head):
                fully_shard(module, mesh=mesh)
            fully_shard(self, mesh=mesh)
        elif isinstance(strategy, FSDPStrategy):
            # FSDP1 on CPU needs device_id=cpu, which FSDPStrategy does not pass (it passes the root device's
            # index, None on CPU, and FSDP then asks for an accelerator). A model that is already wrapped is
            # left as it is by FSDPStrategy, so wrap every module holding parameters here.
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            cpu = torch.device("cpu")
            self.stem = FSDP(self.stem, device_id=cpu, use_orig_params=True)
            self.blocks = nn.Sequential(*[FSDP(b, device_id=cpu, use_orig_params=True) for b in self.blocks])
            self.head = FSDP(self.head, device_id=cpu, use_orig_params=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.blocks(self.stem(x))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.mixing_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)


def full_weights(module: nn.Module) -> dict[str, Tensor]:
    """The unsharded weights (every rank takes part in gathering DTensor shards)."""
    out = {}
    for k, v in module.state_dict().items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = full.detach().cpu().clone()
    return out


class Recorder(Callback):
    """Keep what each rank saw: weights after every validation, weights at train end (before the restore)."""

    def __init__(self) -> None:
        self.val_weights: dict[int, dict[str, Tensor]] = {}
        self.stop_epochs: list[int] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_weights[trainer.current_epoch] = full_weights(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.should_stop:
            self.stop_epochs.append(trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_weights = full_weights(pl_module)  # runs before EarlyStopping's restore (listed first)


def callbacks() -> list[Callback]:
    return [
        EarlyStopping("val_loss", patience=2, restore_best_weights=True),
        # before the gradient callbacks: under DDP it drops the frozen affine gradients in
        # on_before_optimizer_step, and callbacks listed earlier would still count them in their norms
        FreezeBatchNorm(epoch=FREEZE_EPOCH),
        GradientMonitor(log_every_n_steps=1),
        GradientClipping("norm", max_norm=0.5),
        StochasticDepthScheduler(max_rate=0.3, schedule="warmup", cutoff=6, include_dropout=True, verbose=0),
        OverfittingMonitor({"loss": ("train_loss", "val_loss")}, criteria={"gl": 1.0}, verbose=False),
        ProximalL1(l1=1e-3),
        ReproducibleResume(verbose=0),
    ]


def fit(
    strategy: Any, out: Path, ckpt_path: str | None = None, save: bool = False, debug: list[Callback] = ()
) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    x, y, xv, yv = make_data()
    recorder = Recorder()
    ours = callbacks()
    extra: list[Callback] = []
    if save:
        extra.append(ModelCheckpoint(out, "ep{epoch}", save_top_k=-1, auto_insert_metric_name=False))
    logger = MemoryLogger()
    trainer = fast_trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=MAX_EPOCHS,
        callbacks=[recorder, *ours, *extra, *debug],
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=save,
        deterministic=True,
    )
    model = Net()
    trainer.fit(
        model,
        DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False),
        DataLoader(TensorDataset(xv, yv), batch_size=N_VAL // 2),
        ckpt_path=ckpt_path,
    )
    es = ours[0]
    opt = trainer.optimizers[0]
    groups = [
        {
            "name": g.get("name"),
            "weight_decay": g["weight_decay"],
            "lr": g["lr"],
            "params": sorted(g.get("param_names", [])),
        }
        for g in opt.param_groups
    ]
    return {
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "logged": [(s, {k: float(v) for k, v in m.items()}) for s, m in logger.calls],
        "best_epoch": es.best_epoch,
        "best_score": float(es.best_score),
        "stopped_epoch": es.stopped_epoch,
        "restored": es.restored,
        "stop_epochs": recorder.stop_epochs,
        "val_weights": recorder.val_weights,
        "last_weights": recorder.last_weights,
        "final_weights": full_weights(model),
        "groups": groups,
        "states": {cb.state_key: copy.deepcopy(cb.state_dict()) for cb in ours if cb.state_dict()},
        "bn_training": [m.training for m in model.modules() if isinstance(m, nn.BatchNorm1d)],
        "drop_rates": [m.p for m in model.modules() if isinstance(m, (DropPath, nn.Dropout))],
        "world_size": trainer.world_size,
        "rank": trainer.global_rank,
        "strategy": type(trainer.strategy).__name__,
    }


def main(out: Path) -> None:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    results["ddp"] = fit(DDPStrategy(process_group_backend="gloo"), out / "ddp")
    mp = partial(CPUModelParallel, data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo")
    results["mp"] = fit(mp(), out / "mp", save=True)
    results["mp_resumed"] = fit(mp(), out / "mp_resumed", ckpt_path=str(out / "mp" / "ep2.ckpt"))
    try:
        results["fsdp"] = fit(CPUFSDP(process_group_backend="gloo"), out / "fsdp")
    except Exception as err:  # noqa: BLE001 - recorded for the test, which states what happened
        results["fsdp_error"] = f"{type(err).__name__}: {err}"
        results["fsdp_traceback"] = traceback.format_exc()[-3000:]
    rank = results["ddp"]["rank"]
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
