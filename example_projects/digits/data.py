"""scikit-learn's bundled 8x8 digits (1797 images, no download) with torchvision v2 augmentation."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

#: Mean and standard deviation of the pixel values (0..16 scaled to 0..1) over the whole dataset.
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760


class ImageDataset(Dataset):
    """``(image, label)`` pairs from tensors, with an optional per-sample transform (e.g. augmentation)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), self.labels[i]


def default_augmentation() -> v2.Transform:
    """Small rotations, shifts and scalings (no flips: a mirrored digit is another digit, or none)."""
    return v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1))


class DigitsDataModule(L.LightningDataModule):
    """8x8 digits as ``(1, 8, 8)`` normalized images; seeded split into train, validation and test.

    Args:
        train_size: training images (at most ``1797 - val_size - test_size``; ``None``: all the rest).
        val_size: validation images.
        test_size: test images.
        augment: apply :func:`default_augmentation` to training images.
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        split_seed: seed of the split.

    Example:
        >>> dm = DigitsDataModule(train_size=200)
        >>> dm.setup("fit")
        >>> x, y = dm.train_set[0]
        >>> tuple(x.shape), len(dm.train_set), len(dm.val_set)
        ((1, 8, 8), 200, 360)
    """

    def __init__(
        self,
        train_size: int | None = None,
        val_size: int = 360,
        test_size: int = 360,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        rest = 1797 - val_size - test_size
        bad_train = train_size is not None and not 1 <= train_size <= rest
        if val_size < 1 or test_size < 1 or rest < 1 or bad_train:
            raise ValueError(
                "need val_size >= 1, test_size >= 1 and 1 <= train_size <= 1797 - val_size - test_size"
                f" = {rest}, "
                f"got train_size={train_size}, val_size={val_size}, test_size={test_size}"
            )
        self.save_hyperparameters()
        self.train_size = rest if train_size is None else train_size
        self.val_size, self.test_size = val_size, test_size
        self.augment, self.batch_size, self.num_workers = augment, batch_size, num_workers
        self.split_seed = split_seed

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        d = load_digits()
        x = (torch.as_tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0 - DIGITS_MEAN) / DIGITS_STD
        y = torch.as_tensor(d.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        test_idx = perm[: self.test_size]
        val_idx = perm[self.test_size : self.test_size + self.val_size]
        start = self.test_size + self.val_size
        train_idx = perm[start : start + self.train_size]
        aug = default_augmentation() if self.augment else None
        self.train_set = ImageDataset(x[train_idx], y[train_idx], aug)
        self.val_set = ImageDataset(x[val_idx], y[val_idx])
        self.test_set = ImageDataset(x[test_idx], y[test_idx])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.batch_size, num_workers=self.num_workers)
