"""Models for MNIST-1D: a small 1-D ResNet, and Lightning classifiers with it or the shared MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from example_projects.common import MLP, ClassifierModule
from lightning_reg import add_stochastic_depth


class BasicBlock1d(nn.Module):
    """Two 3-tap convolutions with BatchNorm and a (projected) identity shortcut, like torchvision's."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv1d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm1d(planes)
            )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet1d(nn.Module):
    """A small 1-D ResNet for ``(batch, length)`` or ``(batch, 1, length)`` signals.

    Stem, stages of basic blocks, pooling, linear.

    Args:
        num_classes: output classes.
        widths: channels of each stage (the first stage keeps the length, later ones halve it).
        blocks_per_stage: residual blocks per stage.
    """

    def __init__(
        self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 2
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, widths[0], 5, padding=2, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        inplanes = widths[0]
        for i, planes in enumerate(widths):
            blocks = [BasicBlock1d(inplanes, planes, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock1d(planes, planes) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:  # (batch, length) -> (batch, 1, length)
            x = x.unsqueeze(1)
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


class ResNet1dClassifier(ClassifierModule):
    """MNIST-1D classifier with a :class:`ResNet1d`.

    Args:
        widths: channels per stage.
        blocks_per_stage: residual blocks per stage.
        drop_path_rate: if > 0, :func:`~lightning_reg.add_stochastic_depth` inserts DropPath at the end
            of every residual branch, rates rising linearly with depth to this value (a
            :class:`~lightning_reg.StochasticDepthScheduler` can then reschedule them).
        **kwargs: the optimizer, learning rate, weight decay, scheduler and preset of
            :class:`~example_projects.common.ClassifierModule`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 2,
        drop_path_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=10, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = ResNet1d(10, tuple(widths), blocks_per_stage)
        if drop_path_rate > 0:
            add_stochastic_depth(self.net, drop_path_rate, branch_ends={BasicBlock1d: "bn2"})


class MLPClassifier(ClassifierModule):
    """MNIST-1D classifier with an :class:`~example_projects.common.MLP`.

    Args:
        hidden: hidden units per layer.
        depth: hidden layers.
        dropout: dropout probability after each hidden layer.
        **kwargs: the optimizer, learning rate, weight decay, scheduler and preset of
            :class:`~example_projects.common.ClassifierModule`.
    """

    def __init__(self, hidden: int = 256, depth: int = 2, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(num_classes=10, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = MLP(40, 10, hidden, depth, dropout)
