"""What the tests, the distributed scripts and the benchmarks share: a fast Trainer, tiny data and models, a
host-read counter.

Benchmarks import it as ``from tests.helpers import ...`` (they run from the repository root). It imports
no pytest, so scripts started in fresh processes can use it too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import DecayRule, DropPath, RegularizedModule
from lightning_reg.stochastic_depth.layers import find_drop_rate_modules

# ------------------------------------------------------------------------------------------------ Trainer
#: The fast Trainer settings of TESTING.md: no logger, checkpoints, progress bar, summary or sanity check.
FAST_TRAINER: dict[str, Any] = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


def fast_trainer(**overrides: Any) -> L.Trainer:
    """A ``Trainer`` with ``FAST_TRAINER``'s settings; ``overrides`` add to or replace them."""
    return L.Trainer(**{**FAST_TRAINER, **overrides})


#: Lightning's callback hooks that run at every training step (the library's hot path).
PER_STEP_HOOKS: tuple[str, ...] = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)


# ------------------------------------------------------------------------------------------- host reads
#: The ATen ops that read a tensor's value on the host (a host-device sync on an accelerator):
#: ``.item()``, ``float(t)``, ``bool(t)`` and formatting go through ``_local_scalar_dense``.
HOST_READ_OPS: tuple[str, ...] = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero")


class SyncCounter(TorchDispatchMode):
    """Records every read of a tensor's value on the host inside the ``with`` block (see TESTING.md).

    The dispatch mode sees the ``HOST_READ_OPS``; ``Tensor.tolist()`` and ``torch.tensor(list of tensors)``
    read memory directly, so they are patched while the block runs. ``syncs`` lists what was read, in
    order. With ``raise_on_read`` a read raises ``RuntimeError`` instead (a CPU stand-in for CUDA's
    sync-debug mode "error"). Blocks may nest: each restores what it patched.
    """

    def __init__(self, raise_on_read: bool = False) -> None:
        super().__init__()
        self.raise_on_read = raise_on_read
        self.syncs: list[str] = []

    @property
    def count(self) -> int:
        return len(self.syncs)

    def _read(self, what: str) -> None:
        if self.raise_on_read:
            raise RuntimeError(f"host read of a tensor value ({what}) in a per-step hook")
        self.syncs.append(what)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if str(func).rsplit(".", 1)[0] in HOST_READ_OPS:
            self._read(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> SyncCounter:
        self._tolist, self._tensor = Tensor.tolist, torch.tensor
        real_tolist, real_tensor = self._tolist, self._tensor

        def tolist(t: Tensor) -> Any:
            self._read("Tensor.tolist")
            return real_tolist(t)

        def tensor(data: Any, *args: Any, **kwargs: Any) -> Tensor:
            if isinstance(data, (list, tuple)) and any(isinstance(d, Tensor) for d in data):
                self._read("torch.tensor(list of tensors)")
            return real_tensor(data, *args, **kwargs)

        Tensor.tolist = tolist  # type: ignore[method-assign]
        torch.tensor = tensor  # type: ignore[assignment]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        Tensor.tolist = self._tolist  # type: ignore[method-assign]
        torch.tensor = self._tensor  # type: ignore[assignment]
        super().__exit__(*exc)


# ------------------------------------------------------------------------------------------------- data
def teacher_data(
    n_train: int, n_val: int, in_features: int, classes: int, noise: float = 1.0, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x_train, y_train, x_val, y_val``: labels of a random linear teacher, Gaussian noise on its logits.

    With enough noise a small network overfits them after a few epochs (the best epoch is not the last).
    """
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(in_features, classes, generator=g)
    x = torch.randn(n_train + n_val, in_features, generator=g)
    y = (x @ teacher + noise * torch.randn(n_train + n_val, classes, generator=g)).argmax(1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def classification_loader(
    n: int = 32, batch_size: int = 4, shape: tuple[int, ...] = (4,), classes: int = 2, seed: int = 123
) -> DataLoader:
    """``n`` standard-normal inputs of ``shape`` with random labels in ``[0, classes)``, in order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def threshold_data(n: int, seed: int) -> TensorDataset:
    """``n`` inputs of 4 features; 3 classes from two thresholds (``x0 > 0`` plus ``x1 > 0.5``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


# ----------------------------------------------------------------------------------------------- models
class ResidualBlock(nn.Module):
    """``x + drop_path(relu(fc(norm(x))))``: a pre-norm residual block (``norm=False``: no LayerNorm).

    ``p`` and ``mode``: the ``DropPath``'s rate and mode.
    """

    def __init__(self, width: int, norm: bool = True, p: float = 0.0, mode: str = "row") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc = nn.Linear(width, width)
        self.drop_path = DropPath(p, mode=mode)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(torch.relu(self.fc(self.norm(x))))


class ResMLP(nn.Module):
    """Linear in (4 features), a ``ResidualBlock`` without norm per rate in ``rates``, dropout, 2 outputs."""

    def __init__(
        self, rates: list[float], width: int = 8, dropout: float | None = None, modes: list[str] | None = None
    ) -> None:
        super().__init__()
        modes = modes or ["row"] * len(rates)
        self.inp = nn.Linear(4, width)
        blocks = [ResidualBlock(width, norm=False, p=p, mode=m) for p, m in zip(rates, modes)]
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout) if dropout is not None else nn.Identity()
        self.out = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.out(self.dropout(h))


class LitClassifier(L.LightningModule):
    """Cross entropy on ``model`` by SGD; ``log_loss`` logs ``train_loss`` at every step."""

    def __init__(self, model: nn.Module, lr: float = 0.05, log_loss: bool = False) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.log_loss = log_loss

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.log_loss:
            self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class RateRecorder(Callback):
    """Records ``(global_step, every scheduled rate)`` at each training batch; list it after the scheduler."""

    def __init__(self, include_dropout: bool = False) -> None:
        self.include_dropout = include_dropout
        self.rows: list[tuple[int, list[float]]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        found = find_drop_rate_modules(pl_module, include_dropout=self.include_dropout)
        self.rows.append((trainer.global_step, [float(getattr(f.module, f.attr)) for f in found]))


class LMBlock(nn.Module):
    """``x + fc(rms_norm(x))``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc(self.norm(x))


class TinyLMModule(RegularizedModule):
    """A language model of two ``LMBlock``: a tied embedding and head, RMSNorms, embeddings decayed."""

    def __init__(self) -> None:
        super().__init__(lr=1e-3, weight_decay=0.1, decay_rule=DecayRule(embeddings=True))
        self.tok = nn.Embedding(32, 16)
        self.blocks = nn.ModuleList(LMBlock(16) for _ in range(2))
        self.norm = nn.RMSNorm(16)
        self.lm_head = nn.Linear(16, 32, bias=False)
        self.lm_head.weight = self.tok.weight

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x,) = batch
        h = self.tok(x)
        for blk in self.blocks:
            h = blk(h)
        return F.cross_entropy(self.lm_head(self.norm(h)).flatten(0, 1), x.flatten())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randint(0, 32, (16, 8))), batch_size=4)


class DropoutClassifier(L.LightningModule):
    """4 features, 16 ReLU units, dropout 0.5, 3 classes (seeded), SGD.

    Logs ``train_loss`` (epoch mean), ``val_loss`` and ``val_acc`` (with ``sync_dist``); ``train_modes``:
    whether the dropout was in training mode at each training step.
    """

    def __init__(self, sync_dist: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        self.sync_dist = sync_dist
        self.train_modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.train_modes.append(self.net[2].training)
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_epoch=True, on_step=False, sync_dist=self.sync_dist)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self(batch[0])
        self.log("val_loss", F.cross_entropy(logits, batch[1]), sync_dist=self.sync_dist)
        self.log("val_acc", (logits.argmax(-1) == batch[1]).float().mean(), sync_dist=self.sync_dist)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class LossModule(L.LightningModule):
    """Trains ``net`` on ``loss``; logs ``train_loss`` (epoch mean) and ``val_loss``.

    Args:
        net: the network.
        make_optimizer: ``params -> Optimizer``.
        loss_fn: ``(output, target) -> loss`` (cross entropy by default).
    """

    def __init__(
        self,
        net: nn.Module,
        make_optimizer: Callable[[Any], torch.optim.Optimizer],
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = make_optimizer
        self.loss_fn = loss_fn

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_fn(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss_fn(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


def conv_bn_net() -> nn.Sequential:
    """Seeded conv, ``BatchNorm2d`` (``net[1]``), ReLU, flatten, linear: ``(B, 2, 4, 4)`` in, 3 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )


class BatchNormRecorder(L.LightningModule):
    """Trains ``net`` (its ``net[1]`` a BatchNorm) on cross entropy; records what a BatchNorm freeze changes.

    ``bn_training``: whether the BatchNorm was in training mode at each training step; ``snapshots``: the
    state at each epoch end, by epoch.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.snapshots: dict[int, dict[str, Tensor]] = {}
        self.bn_training: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.bn_training.append(self.net[1].training)
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_epoch_end(self) -> None:
        state = self.state_dict()
        self.snapshots[self.current_epoch] = {k: v.detach().cpu().clone() for k, v in state.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # momentum and weight decay: a frozen parameter with a zero (not None) gradient would still move
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)


# ------------------------------------------------------------------ a validation loss with its best inside
#: Training targets are scaled per epoch; validation targets are not. The validation loss is therefore
#: lowest around the epoch trained at scale 1 and worse before and after it.
SCALES = [3.0, 2.0, 1.2, 1.0, 1.6, 2.4, 3.2, 4.0, 5.0, 6.0]


def regression_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` inputs of 4 features and their exact linear targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [1.5]])
    return x, x @ w


class ScaledRegression(L.LightningModule):
    """A regression trained on targets scaled by ``SCALES``: its best validation epoch is in the middle.

    Args:
        nan_from_epoch: from this epoch of ``fit`` on, the logged ``val_loss`` is NaN.
        hidden: width of the hidden layer (followed by a BatchNorm).
        n_train: training samples (batches of 16).
        n_val: validation samples (batches of 16).
    """

    def __init__(
        self, nan_from_epoch: int | None = None, hidden: int = 8, n_train: int = 64, n_val: int = 32
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 1))
        self.nan_from_epoch = nan_from_epoch
        self.n_train, self.n_val = n_train, n_val

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        scale = SCALES[min(self.current_epoch, len(SCALES) - 1)]
        return F.mse_loss(self.net(x), y * scale)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        fitting = self.trainer.state.fn == "fit"
        if fitting and self.nan_from_epoch is not None and self.current_epoch >= self.nan_from_epoch:
            loss = loss + float("nan")
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.03)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*regression_data(self.n_train, 0)), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*regression_data(self.n_val, 1)), batch_size=16)


class ValidationRecorder(Callback):
    """``records``: ``(epoch, val_loss, deep copy of the state_dict)`` after every validation of ``fit``."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, dict[str, Tensor]]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics["val_loss"].item()
        self.records.append((trainer.current_epoch, value, copy.deepcopy(pl_module.state_dict())))

    def expected_best(self, start_from_epoch: int = 0) -> tuple[int, float, dict[str, Tensor]]:
        """The record of the first strict minimum among the finite values from ``start_from_epoch`` on."""
        best = None
        for rec in self.records:
            if rec[0] < start_from_epoch or rec[1] != rec[1]:
                continue
            if best is None or rec[1] < best[1]:
                best = rec
        assert best is not None
        return best


def end_process_group() -> None:
    """End a DDP script: destroy the gloo group Lightning leaves alive, on every rank.

    Its threads torn down during interpreter finalization now and then abort a rank after every fit has
    finished ("terminate called without an active exception", SIGABRT), which fails the launching test.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
