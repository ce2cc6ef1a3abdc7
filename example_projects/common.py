"""Pieces shared by the example projects: the classifier LightningModule base, an MLP and the CLI factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI, LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_reg import RegularizedModule


class ClassifierModule(RegularizedModule):
    """Cross-entropy classifier around ``self.net`` (set by subclasses), on :class:`RegularizedModule`.

    The optimizer comes from :class:`~lightning_reg.RegularizedModule`: decay and no-decay parameter
    groups (biases and normalization parameters never decay). Without a preset, ``weight_decay`` defaults
    to 0 here, so a config without it is unregularized; with ``preset`` the preset's module side applies
    (its weight decay unless ``weight_decay`` is given, its label smoothing and Mixup/CutMix), and the
    training loss is the soft-target cross entropy of :meth:`mixing_loss`.

    Logs, once per epoch and reduced across ranks: ``train_loss``/``train_acc`` (training mode, i.e. with
    dropout, drop-path and mixing active; accuracy against the dominant class of a mixed target),
    ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (plain cross entropy, so every configuration
    is measured the same way).

    A subclass takes its own arguments (the network's) and passes ``**kwargs`` on to this ``__init__``:
    LightningCLI (jsonargparse) follows ``super().__init__(**kwargs)`` to the arguments below, so a config
    sets ``optimizer``, ``lr``, ``weight_decay``, ``lr_scheduler`` and ``preset`` on every subclass.

    Args:
        optimizer: callable ``params -> Optimizer`` (default AdamW).
        lr: learning rate.
        weight_decay: decay of the decayed parameter groups; ``None``: the preset's, else 0.
        lr_scheduler: callable ``optimizer -> scheduler``, stepped every optimizer step; None for none.
        preset: ``"mild"``, ``"medium"``, ``"strong"`` or None (see :func:`lightning_reg.preset_callbacks`
            for the Trainer side).
        num_classes: number of classes (for the preset's label smoothing and mixing).

    Example:
        >>> from torch import nn
        >>> class Linear(ClassifierModule):
        ...     def __init__(self):
        ...         super().__init__(weight_decay=0.1)
        ...         self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        >>> model = Linear()
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        >>> [(g["name"], g["weight_decay"]) for g in model.configure_optimizers()["optimizer"].param_groups]
        [('decay', 0.1), ('no_decay', 0.0)]
    """

    net: nn.Module

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-3,
        weight_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        preset: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        if weight_decay is None and preset is None:
            weight_decay = 0.0
        super().__init__(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_scheduler=lr_scheduler,
            preset=preset,
            num_classes=num_classes,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        if y.ndim == 2:  # soft targets of a mixer (label smoothing, Mixup, CutMix): training only
            loss = self.mixing_loss(logits, y)
            y = y.argmax(dim=-1)
        else:
            loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        # on_epoch only: the values stay on device and are reduced once per epoch (no per-step host sync).
        opts: dict[str, Any] = dict(on_step=False, on_epoch=True, batch_size=y.shape[0], sync_dist=True)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", **opts)
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train", **opts)
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``hidden`` ReLU units with optional dropout after each, then a linear head.

    Args:
        in_features: input features.
        num_classes: output classes.
        hidden: hidden units per layer.
        depth: hidden layers (0: a linear classifier).
        dropout: dropout probability after each hidden layer. The ``nn.Dropout`` modules exist at 0 too
            (as in torchvision's and Hugging Face's models), so a preset's dropout stand-in can set them.

    Example:
        >>> MLP(40, 10, hidden=32, depth=2, dropout=0.5)(torch.zeros(4, 40)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int = 40,
        num_classes: int = 10,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden if depth else in_features, num_classes))
        super().__init__(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, loader: Any) -> float:
    """Accuracy of ``model`` in eval mode over ``loader`` (restores the previous train/eval mode).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.eye(3), torch.tensor([0, 1, 1]))  # the identity predicts 0, 1, 2
        >>> model = nn.Linear(3, 3, bias=False)
        >>> _ = nn.init.eye_(model.weight)
        >>> round(accuracy(model, DataLoader(data, batch_size=2)), 4)
        0.6667
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    device = next(model.parameters()).device
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=-1).cpu()
        correct += int((pred == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return correct / max(total, 1)


def make_cli(
    datamodule_class: type[L.LightningDataModule], args: Any = None, run: bool = True
) -> LightningCLI:
    """LightningCLI over every :class:`ClassifierModule` subclass (chosen by ``model.class_path``).

    Example:
        >>> from example_projects.mnist1d import MNIST1DDataModule
        >>> cli = make_cli(MNIST1DDataModule, run=False, args=[  # doctest: +SKIP
        ...     "--config", "example_projects/mnist1d/configs/baseline.yaml", "--trainer.max_epochs=1"])
    """
    return LightningCLI(
        ClassifierModule,
        datamodule_class,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
