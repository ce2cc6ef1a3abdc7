"""A torchvision ResNet adapted to 8x8 grayscale digits."""

from __future__ import annotations

from typing import Any, Literal

import torchvision
from torch import nn

from example_projects.common import ClassifierModule
from lightning_reg import add_stochastic_depth


def resnet_for_8x8(
    arch: Literal["resnet18", "resnet34"] = "resnet18", num_classes: int = 10, width: int = 64
) -> nn.Module:
    """A torchvision ResNet (random init) with a 3x3 stride-1 one-channel stem and no max-pool.

    The ImageNet stem (7x7 stride-2 conv, then max-pool) would shrink 8x8 inputs to 2x2 before the first
    residual stage; with this stem the stages see 8x8, 4x4, 2x2 and 1x1 maps. ``width`` is the channel
    count of the first stage (64 in torchvision; the stages double it): the stages are rebuilt with
    torchvision's own ``ResNet._make_layer`` and initialised as torchvision initialises them, so a narrow
    network is still torchvision's ``ResNet`` of ``BasicBlock`` modules, only cheaper on a CPU.

    Example:
        >>> import torch
        >>> resnet_for_8x8()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in resnet_for_8x8(width=16).parameters()) < 800_000
        True
    """
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if width != 64:
        block = type(model.layer1[0])
        depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
        model.bn1 = model._norm_layer(width)
        model.inplanes = width
        for i, depth in enumerate(depths):
            stage = model._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2)
            setattr(model, f"layer{i + 1}", stage)
        model.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in model.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
    return model


class DigitsResNet(ClassifierModule):
    """Digits classifier with :func:`resnet_for_8x8`.

    Args:
        arch: torchvision ResNet variant.
        width: channels of the first stage (torchvision: 64).
        drop_path_rate: if > 0, :func:`~lightning_reg.add_stochastic_depth` inserts DropPath into every
            torchvision ``BasicBlock``, rates rising linearly with depth to this value.
        **kwargs: the optimizer, learning rate, weight decay, scheduler and preset of
            :class:`~example_projects.common.ClassifierModule`.
    """

    def __init__(
        self,
        arch: Literal["resnet18", "resnet34"] = "resnet18",
        width: int = 64,
        drop_path_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=10, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = resnet_for_8x8(arch, width=width)
        if drop_path_rate > 0:
            add_stochastic_depth(self.net, drop_path_rate)
