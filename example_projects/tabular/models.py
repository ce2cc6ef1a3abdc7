"""An MLP classifier for tabular features (no residual block: a preset's drop-path is skipped, noted)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from example_projects.common import ClassifierModule


class TabularMLP(ClassifierModule):
    """``depth`` hidden layers of ``hidden`` ReLU units (with optional dropout) for tabular features.

    Args:
        in_features: number of input features (30 for breast cancer, 13 for wine).
        num_classes: number of classes (2 for breast cancer, 3 for wine).
        hidden: hidden units per layer.
        depth: hidden layers.
        dropout: dropout after each hidden layer.
        optimizer: callable ``params -> Optimizer``.
        lr: learning rate.
        weight_decay: decay of the decayed parameter groups (None: the preset's, else 0).
        lr_scheduler: callable ``optimizer -> scheduler``.
        preset: regularization preset of the module side (``"mild"``, ``"medium"``, ``"strong"``).

    Example:
        >>> TabularMLP(hidden=16)(torch.zeros(4, 30)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        in_features: int = 30,
        num_classes: int = 2,
        hidden: int = 256,
        depth: int = 3,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-3,
        weight_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_scheduler=lr_scheduler,
            preset=preset,
            num_classes=num_classes,
        )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden if depth else in_features, num_classes))
        self.net = nn.Sequential(*layers)
