"""User code checked by ``mypy --strict`` against the package (``.ci/typecheck.sh``), the way a user's is.

The README's quickstart with annotations, a ``RegularizedModule`` subclass, each callback and mixin built
with typical arguments, and ``assert_type`` checks that mypy sees the real signatures and attribute types
(an ``Any`` would pass any call and fail these). Importing it runs nothing; ``main()`` runs the quickstart.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import assert_type

from lightning_reg import (
    BatchMixer,
    BatchMixingMixin,
    DecayRule,
    DropPath,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    PenaltyMixin,
    ProximalL1,
    RegularizedModule,
    ReproducibleResume,
    StochasticDepthScheduler,
    WarmupCosineLR,
    add_stochastic_depth,
    cutmix,
    drop_path,
    freeze_batchnorm,
    get_preset,
    grad_norms,
    mixup,
    preset_callbacks,
    weight_decay_param_groups,
)
from lightning_reg.penalties import WeightPenalty
from lightning_reg.presets import Preset


class Block(nn.Module):
    """A residual block: ``add_stochastic_depth`` finds the branch end by the ``branch_ends`` mapping."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.norm(self.fc(x))
        return out


class Classifier(RegularizedModule):
    """The README's quickstart model (a small MLP here, so the file needs no torchvision)."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.05) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), Block(16), Block(16), nn.Linear(16, 10))
        self.drop_paths = add_stochastic_depth(self.net, max_rate=0.1, branch_ends={Block: "norm"})

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


class PresetClassifier(RegularizedModule):
    """The module side of a preset, with mixing: ``training_step`` gets soft targets."""

    def __init__(self, preset: str = "mild") -> None:
        super().__init__(preset=preset, num_classes=10, decay_rule=DecayRule(embeddings=True))
        self.net = nn.Linear(12, 10)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.mixing_loss(self.net(batch[0]), batch[1])


class PenalisedMixed(PenaltyMixin, BatchMixingMixin, L.LightningModule):
    """The two mixins on a plain LightningModule, before it in the bases."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(12, 10)
        self.weight_penalty = WeightPenalty(l1=1e-5, l2=1e-4)
        self.batch_mixer = BatchMixer(num_classes=10, mixup_alpha=0.2, cutmix_alpha=1.0, seed=0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.mixing_loss(self.net(batch[0]), batch[1])
        return loss + self.penalty()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = weight_decay_param_groups(self, 0.05, lr=1e-3)
        return torch.optim.AdamW(groups)


def callbacks() -> list[Callback]:
    """Every callback, with the arguments a user typically gives it."""
    return [
        EarlyStopping("val_loss", patience=5, snapshot="cpu"),
        GradientMonitor(log_every_n_steps=1, group_by="param_groups"),
        GradientClipping("zclip", zclip_z_thresh=2.5, skip_nonfinite=True),
        StochasticDepthScheduler(schedule="warmup", cutoff=1, cutoff_unit="epoch"),
        OverfittingMonitor(pairs={"loss": ("train_loss", "val_loss")}, warmup=1, verbose=2),
        FreezeBatchNorm(epoch=2, modules=["net.2"]),
        ProximalL1(1e-5),
        ReproducibleResume(cuda_devices=[0]),
    ]


def the_real_signatures_are_seen() -> None:
    """``assert_type`` fails under mypy if a name or attribute were ``Any`` or had another type."""
    es = EarlyStopping(monitor="val_loss")
    assert_type(es.restore_best_weights, bool)
    assert_type(es.best_epoch, int | None)
    assert_type(es.best_score, Tensor)
    assert_type(es.patience, int)
    assert_type(GradientClipping("norm", max_norm=1.0).skip_nonfinite, bool)
    assert_type(OverfittingMonitor({"acc": ("train_acc", "val_acc", "max")}).history, list[dict[str, Any]])
    assert_type(BatchMixer(10).mixup_alpha, float)
    assert_type(DropPath(0.1).p, float)
    assert_type(DropPath(0.1, mode="batch").mode, Literal["row", "batch"])
    assert_type(drop_path(torch.ones(2, 3), 0.2, training=True), Tensor)
    assert_type(mixup(torch.ones(2, 3), 0.7), Tensor)
    assert_type(cutmix(torch.ones(2, 1, 4), (slice(1, 3),)), Tensor)
    assert_type(grad_norms([torch.ones(3)]).total, Tensor)
    assert_type(freeze_batchnorm(nn.BatchNorm1d(3)), list[nn.modules.batchnorm._BatchNorm])
    assert_type(get_preset("medium", patience=10), Preset)
    assert_type(get_preset("strong").drop_path_rate, float | None)
    assert_type(preset_callbacks("mild", monitor="val_acc", mode="max"), list[Callback])
    assert_type(Classifier().regularization_config.weight_decay, float | None)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert_type(WarmupCosineLR(optimizer, warmup_steps=10, total_steps=100).lr_factor(5), float)


def main() -> None:
    """The README's quickstart: three epochs on random data."""
    x, y = torch.randn(32, 3, 4), torch.randint(0, 10, (32,))
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(
        max_epochs=3,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            EarlyStopping("val_loss", patience=5),
            GradientMonitor(),
            GradientClipping("zclip"),
            StochasticDepthScheduler(schedule="warmup", cutoff=1, cutoff_unit="epoch"),
            OverfittingMonitor(pairs={"loss": ("train_loss", "val_loss")}, verbose=2),
        ],
    )
    trainer.fit(Classifier(), data, data)


if __name__ == "__main__":
    main()
