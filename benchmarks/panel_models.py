"""Models and data of the presets panel that the example projects do not have (``benchmarks/panel.py``).

Every model is a ``ClassifierModule`` (``example_projects.common``): it logs ``train_/val_/test_`` loss and
accuracy, takes ``preset``, ``weight_decay``, ``optimizer``, ``lr``, ``lr_scheduler`` and passes them to
``RegularizedModule``. Every dataset is generated here or shipped inside a package (scikit-learn), with a
fixed train / validation / test split.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from example_projects.common import ClassifierModule


class TensorDataModule(L.LightningDataModule):
    """Train / validation / test tensors behind DataLoaders (the training loader shuffles).

    Args:
        splits: ``{"train" | "val" | "test": (x, y)}``.
        batch_size: batch size of every loader.
    """

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]], batch_size: int = 64) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(*splits[k]) for k in ("train", "val", "test")
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def _split(
    x: Tensor, y: Tensor, sizes: tuple[int, int, int], seed: int = 0
) -> dict[str, tuple[Tensor, Tensor]]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    a, b, c = sizes
    parts = order[:a], order[a : a + b], order[a + b : a + b + c]
    return {k: (x[i], y[i]) for k, i in zip(("train", "val", "test"), parts)}


def synthetic_tabular(sizes: tuple[int, int, int] = (3000, 1000, 2000)) -> TensorDataModule:
    """scikit-learn's ``make_classification``: 40 features (10 informative), 4 classes, 5 % flipped labels."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=sum(sizes),
        n_features=40,
        n_informative=10,
        n_redundant=10,
        n_classes=4,
        n_clusters_per_class=3,
        flip_y=0.05,
        class_sep=0.8,
        random_state=0,
    )
    xt = torch.tensor(x, dtype=torch.float32)
    xt = (xt - xt.mean(0)) / xt.std(0)
    return TensorDataModule(_split(xt, torch.tensor(y), sizes), batch_size=128)


def token_sequences(sizes: tuple[int, int, int] = (1000, 1000, 2000), length: int = 32) -> TensorDataModule:
    """Token sequences (vocabulary 64, length 32) whose class is the most frequent of four signal tokens.

    Each sequence holds 8 signal tokens (ids 1-4) among noise tokens (ids 5-63); the class is the signal
    token seen most often (ties to the smallest id); 10 % of the labels are then replaced at random.
    """
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    x = torch.randint(5, 64, (n, length), generator=g)
    signal = torch.randint(1, 5, (n, 8), generator=g)
    where = torch.rand(n, length, generator=g).argsort(dim=1)[:, :8]
    x.scatter_(1, where, signal)
    counts = torch.stack([(signal == k).sum(1) for k in range(1, 5)], dim=1)
    y = counts.argmax(1)
    flip = torch.rand(n, generator=g) < 0.1
    y[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    return TensorDataModule(_split(x, y, sizes), batch_size=64)


class CNN1dClassifier(ClassifierModule):
    """A plain 1-D CNN for MNIST-1D (no residual block): three conv-ReLU-pool stages, dropout, linear head.

    Args:
        channels: channels of the three stages.
        dropout: dropout before the head and between the stages (the modules exist at 0 too).
        **kwargs: ``ClassifierModule``'s arguments.
    """

    def __init__(self, channels: int = 32, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(num_classes=10, **kwargs)
        c = channels
        self.net = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Dropout(dropout),
            nn.Conv1d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Dropout(dropout),
            nn.Conv1d(2 * c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(4),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(8 * c, 10),
        )


class TokenTransformer(ClassifierModule):
    """A small transformer encoder (torch's ``nn.TransformerEncoder``) over token sequences, mean-pooled.

    Its residual connections live inside ``nn.TransformerEncoderLayer.forward``: drop-path has no branch
    end to attach to, so for the presets it is a model without residual blocks (its dropout modules,
    which exist at rate 0 too, take the dropout stand-in).

    Args:
        vocab: vocabulary size.
        length: sequence length (learned positions).
        dim: model width.
        layers: encoder layers.
        heads: attention heads.
        dropout: the encoder layers' dropout.
        num_classes: classes.
        **kwargs: ``ClassifierModule``'s arguments.
    """

    def __init__(
        self,
        vocab: int = 64,
        length: int = 32,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        num_classes: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


class DigitsViT(ClassifierModule):
    """torchvision's ``VisionTransformer`` built from a config for 8x8 digits (patch 2: 16 tokens).

    torchvision's encoder blocks add their residuals inside ``forward`` (no branch end for drop-path): the
    presets treat it as a model without residual blocks, and its dropout modules (built at rate 0 too)
    take the dropout stand-in.

    Args:
        dropout: the transformer's dropout.
        **kwargs: ``ClassifierModule``'s arguments.
    """

    def __init__(self, dropout: float = 0.0, **kwargs: Any) -> None:
        from torchvision.models import VisionTransformer

        super().__init__(num_classes=10, **kwargs)
        self.net = VisionTransformer(
            image_size=8,
            patch_size=2,
            num_layers=4,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
            dropout=dropout,
            num_classes=10,
        )
        self.net.conv_proj = nn.Conv2d(1, 64, kernel_size=2, stride=2)  # one channel in
