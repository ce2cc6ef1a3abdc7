"""Tabular classification data bundled with scikit-learn (``load_breast_cancer``, ``load_wine``).

The ``load_*`` functions read files shipped with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

DATASETS = ("breast_cancer", "wine")


def load_tabular(name: Literal["breast_cancer", "wine"] = "breast_cancer") -> tuple[Tensor, Tensor]:
    """Features (float32) and class indices of a dataset bundled with scikit-learn.

    Example:
        >>> x, y = load_tabular("breast_cancer")
        >>> tuple(x.shape), int(y.max()) + 1
        ((569, 30), 2)
    """
    from sklearn import datasets  # bundled files only: the load_* functions never download

    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {DATASETS}; got {name!r}.")
    d = getattr(datasets, f"load_{name}")()
    return torch.as_tensor(d.data, dtype=torch.float32), torch.as_tensor(d.target, dtype=torch.long)


class TabularDataModule(L.LightningDataModule):
    """A bundled tabular dataset, split once with ``split_seed``, standardised with training statistics.

    The test rows come first in the seeded permutation, then the validation rows, then the training rows,
    so ``train_size`` changes only the training set. Features are standardised with the mean and standard
    deviation of the training rows (validation and test rows never influence them).

    Args:
        dataset: ``"breast_cancer"`` (569 rows, 30 features, 2 classes) or ``"wine"`` (178, 13, 3).
        train_size: training rows (``None``: all the rest).
        val_size: validation rows.
        test_size: test rows.
        batch_size: batch size of every loader.
        split_seed: seed of the split.

    Example:
        >>> dm = TabularDataModule(train_size=100)
        >>> dm.setup("fit")
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set), dm.num_features, dm.num_classes
        (100, 150, 169, 30, 2)
    """

    def __init__(
        self,
        dataset: Literal["breast_cancer", "wine"] = "breast_cancer",
        train_size: int | None = None,
        val_size: int = 150,
        test_size: int = 169,
        batch_size: int = 32,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        x, _ = load_tabular(dataset)
        rest = len(x) - val_size - test_size
        if (
            val_size < 1
            or test_size < 1
            or rest < 1
            or (train_size is not None and not 1 <= train_size <= rest)
        ):
            raise ValueError(
                f"need val_size >= 1, test_size >= 1 and 1 <= train_size <= {len(x)} - val_size - test_size; "
                f"got train_size={train_size}, val_size={val_size}, test_size={test_size}"
            )
        self.save_hyperparameters()
        self.dataset = dataset
        self.train_size = rest if train_size is None else train_size
        self.val_size, self.test_size = val_size, test_size
        self.batch_size, self.split_seed = batch_size, split_seed
        self.num_features = int(x.shape[1])
        self.num_classes = int(load_tabular(dataset)[1].max()) + 1

    def setup(self, stage: str) -> None:
        x, y = load_tabular(self.dataset)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        test_idx = perm[: self.test_size]
        val_idx = perm[self.test_size : self.test_size + self.val_size]
        start = self.test_size + self.val_size
        train_idx = perm[start : start + self.train_size]
        mean = x[train_idx].mean(0)
        std = x[train_idx].std(0).clamp_min(1e-6)
        x = (x - mean) / std
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 256)
