"""An MLP classifier for tabular features (no residual block: a preset's drop-path is skipped, noted)."""

from __future__ import annotations

from typing import Any

from example_projects.common import MLP, ClassifierModule


class TabularMLP(ClassifierModule):
    """``depth`` hidden layers of ``hidden`` ReLU units (with optional dropout) for tabular features.

    Args:
        in_features: number of input features (30 for breast cancer, 13 for wine).
        num_classes: number of classes (2 for breast cancer, 3 for wine).
        hidden: hidden units per layer.
        depth: hidden layers.
        dropout: dropout after each hidden layer.
        **kwargs: the optimizer, learning rate, weight decay, scheduler and preset of
            :class:`~example_projects.common.ClassifierModule`.

    Example:
        >>> import torch
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
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = MLP(in_features, num_classes, hidden, depth, dropout)
