"""A torchvision ResNet adapted to 8x8 grayscale digits."""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from example_projects.common import ClassifierModule
from lightning_reg import add_stochastic_depth


def resnet_for_8x8(arch: Literal["resnet18", "resnet34"] = "resnet18", num_classes: int = 10) -> nn.Module:
    """A torchvision ResNet (random init) with a 3x3 stride-1 one-channel stem and no max-pool.

    The ImageNet stem (7x7 stride-2 conv, then max-pool) would shrink 8x8 inputs to 2x2 before the first
    residual stage; with this stem the stages see 8x8, 4x4, 2x2 and 1x1 maps.

    Example:
        >>> import torch
        >>> resnet_for_8x8()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class DigitsResNet(ClassifierModule):
    """Digits classifier with :func:`resnet_for_8x8`.

    Args:
        arch: torchvision ResNet variant.
        drop_path_rate: if > 0, :func:`~lightning_reg.add_stochastic_depth` inserts DropPath into every
            torchvision ``BasicBlock``, rates rising linearly with depth to this value.
        optimizer: callable ``params -> Optimizer``.
        lr: learning rate.
        weight_decay: decay of the decayed parameter groups.
        lr_scheduler: callable ``optimizer -> scheduler``.
    """

    def __init__(
        self,
        arch: Literal["resnet18", "resnet34"] = "resnet18",
        drop_path_rate: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, lr_scheduler=lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = resnet_for_8x8(arch)
        if drop_path_rate > 0:
            add_stochastic_depth(self.net, drop_path_rate)
