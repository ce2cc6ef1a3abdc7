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


def first_half_tokens(sizes: tuple[int, int, int] = (800, 1000, 2000), length: int = 24) -> TensorDataModule:
    """Token sequences (vocabulary 40, length 24) whose class is the signal token seen most in the first half.

    Six signal tokens (ids 1-3) are placed in the first 12 positions and six more in the last 12, drawn
    independently, among noise tokens (ids 4-39); the class is the most frequent signal token of the first
    half (ties to the smallest id), so the model must use positions as well as counts. 15 % of the labels
    are then replaced at random.
    """
    g = torch.Generator().manual_seed(1)
    n, half = sum(sizes), length // 2
    x = torch.randint(4, 40, (n, length), generator=g)
    for start in (0, half):
        signal = torch.randint(1, 4, (n, 6), generator=g)
        where = start + torch.rand(n, half, generator=g).argsort(dim=1)[:, :6]
        x.scatter_(1, where, signal)
    first = x[:, :half]
    y = torch.stack([(first == k).sum(1) for k in range(1, 4)], dim=1).argmax(1)
    flip = torch.rand(n, generator=g) < 0.15
    y[flip] = torch.randint(0, 3, (int(flip.sum()),), generator=g)
    return TensorDataModule(_split(x, y, sizes, seed=1), batch_size=32)


def last_marker_tokens(sizes: tuple[int, int, int] = (600, 1000, 2000), length: int = 20) -> TensorDataModule:
    """Token sequences (vocabulary 30, length 20) whose class is the marker token that comes last.

    Each of three marker tokens (ids 1-3) is placed twice at random positions among noise tokens (ids
    4-29); the class is the marker at the last of those six positions, so the model must read the order,
    not the counts. 15 % of the labels are then replaced at random.
    """
    g = torch.Generator().manual_seed(2)
    n = sum(sizes)
    x = torch.randint(4, 30, (n, length), generator=g)
    where = torch.rand(n, length, generator=g).argsort(dim=1)[:, :6]
    x.scatter_(1, where, torch.tensor([1, 1, 2, 2, 3, 3]).expand(n, 6))
    y = x.gather(1, where.max(dim=1, keepdim=True).values).squeeze(1) - 1
    flip = torch.rand(n, generator=g) < 0.15
    y[flip] = torch.randint(0, 3, (int(flip.sum()),), generator=g)
    return TensorDataModule(_split(x, y, sizes, seed=2), batch_size=32)


class TokenGRU(ClassifierModule):
    """A recurrent classifier: token embedding, one GRU layer, dropout, a linear head on the last state.

    No residual block: drop-path has nowhere to go, and its ``nn.Dropout`` modules (built at rate 0 too)
    are what dropout acts on.

    Args:
        vocab: vocabulary size.
        dim: embedding width and GRU hidden size.
        dropout: dropout on the embeddings and before the head.
        num_classes: classes.
        **kwargs: ``ClassifierModule``'s arguments.
    """

    def __init__(
        self, vocab: int = 30, dim: int = 64, dropout: float = 0.0, num_classes: int = 3, **kwargs: Any
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.embed = nn.Embedding(vocab, dim)
        self.drop_in = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.drop_out = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, last = self.gru(self.drop_in(self.embed(x)))
        return self.head(self.drop_out(last[-1]))


class TokenBert(ClassifierModule):
    """Hugging Face BERT (``BertForSequenceClassification``) built from a ``BertConfig``, over tokens.

    BERT adds its residuals inside ``BertSelfOutput`` / ``BertOutput``, which drop-path does not know by
    type: for the presets it is a model without residual blocks the library can find, and its dropout
    modules (built at rate 0 too) take the dropout stand-in.

    Args:
        dropout: BERT's hidden and attention-probability dropout.
        num_classes: classes.
        **kwargs: ``ClassifierModule``'s arguments.
    """

    def __init__(self, dropout: float = 0.0, num_classes: int = 3, **kwargs: Any) -> None:
        from transformers import BertConfig, BertForSequenceClassification

        super().__init__(num_classes=num_classes, **kwargs)
        config = BertConfig(
            vocab_size=40,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=24,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            num_labels=num_classes,
        )
        self.net = BertForSequenceClassification(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(input_ids=x).logits  # type: ignore[no-any-return]


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

    Its residual connections live inside ``nn.TransformerEncoderLayer.forward``; drop-path finds the layers
    by type and attaches to the ends of their two branches (``dropout1``, ``dropout2``).

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

    torchvision's encoder blocks add their residuals inside ``forward``; drop-path finds them by type and
    attaches to the ends of their two branches (``dropout`` after attention, ``mlp``).

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
