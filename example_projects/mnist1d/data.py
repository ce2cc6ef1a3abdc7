"""MNIST-1D (Greydanus 2020) generated locally with ``mnist1d.data.make_dataset`` and cached as ``.npz``."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

#: Size of the generated training split (the remaining 1000 of 5000 samples are the test split).
MNIST1D_TRAIN_POOL = 4000


def default_cache_dir() -> Path:
    """``$LIGHTNING_REG_DATA/mnist1d`` if set, else ``~/.cache/lightning_reg/mnist1d``."""
    root = os.environ.get("LIGHTNING_REG_DATA")
    return Path(root) / "mnist1d" if root else Path.home() / ".cache" / "lightning_reg" / "mnist1d"


def _generate(seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # heavy import (pulls in matplotlib)

    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global `random` and numpy generators: leave the caller's state untouched.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test", "t")}


def load_mnist1d(cache_dir: str | Path | None = None, seed: int = 42) -> dict[str, np.ndarray]:
    """Return the MNIST-1D arrays (``x``, ``y``: 4000 train; ``x_test``, ``y_test``: 1000 test).

    Generated with the reference arguments (``get_dataset_args()``, ``seed`` 42 by default) on first use,
    then read from ``<cache_dir>/mnist1d_seed<seed>.npz``. The write is atomic, so concurrent ranks are safe.
    Never touches the network.
    """
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = path / f"mnist1d_seed{seed}.npz"
    if not file.exists():
        arrays = _generate(seed)
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)
    with np.load(file) as f:
        return {k: f[k] for k in f.files}


class MNIST1DDataModule(L.LightningDataModule):
    """MNIST-1D train/val/test loaders; ``train_size`` makes overfitting visible on a CPU in minutes.

    The 4000-sample training split is shuffled once with ``split_seed``; the first ``val_size`` samples
    are the validation set, the next ``train_size`` the training set. The 1000-sample test split is the
    test set. Inputs are ``(batch, 40)`` float32 signals, targets class indices.

    Args:
        data_dir: cache directory for the generated arrays (default: :func:`default_cache_dir`).
        train_size: number of training samples (at most ``4000 - val_size``).
        val_size: number of validation samples carved from the training split.
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        split_seed: seed of the train/validation split.
        dataset_seed: seed passed to ``make_dataset`` (42 reproduces the published dataset).
        channel_dim: yield ``(batch, 1, 40)`` one-channel signals instead of ``(batch, 40)``, so batch
            mixing sees a sequence dimension (a preset's CutMix cuts segments; it is skipped for
            ``(batch, 40)`` rows, which look like tabular data).
        eval_batch_size: batch size of the validation and test loaders (default: ``batch_size``); larger
            batches evaluate faster on a CPU and give the same metrics (BatchNorm is in eval mode there).

    Example:
        >>> dm = MNIST1DDataModule(train_size=500, val_size=500)  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("fit"); len(dm.train_set)  # doctest: +SKIP
        500
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_size: int = 3000,
        val_size: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
        dataset_seed: int = 42,
        channel_dim: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if val_size < 1 or train_size < 1 or train_size + val_size > MNIST1D_TRAIN_POOL:
            raise ValueError(
                f"need train_size >= 1, val_size >= 1 and train_size + val_size <= {MNIST1D_TRAIN_POOL}, "
                f"got train_size={train_size}, val_size={val_size}"
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.train_size = train_size
        self.val_size = val_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.dataset_seed = dataset_seed
        self.channel_dim = channel_dim
        self.eval_batch_size = eval_batch_size or batch_size

    def prepare_data(self) -> None:
        load_mnist1d(self.data_dir, self.dataset_seed)

    def setup(self, stage: str) -> None:
        d = load_mnist1d(self.data_dir, self.dataset_seed)
        x = torch.from_numpy(d["x"]).float()
        y = torch.from_numpy(d["y"]).long()
        x_test = torch.from_numpy(d["x_test"]).float()
        if self.channel_dim:
            x, x_test = x.unsqueeze(1), x_test.unsqueeze(1)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx = perm[: self.val_size]
        train_idx = perm[self.val_size : self.val_size + self.train_size]
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x_test, torch.from_numpy(d["y_test"]).long())

    def train_dataloader(self) -> DataLoader:
        # Shuffled by the global generator, so `seed_everything` makes runs reproducible.
        return DataLoader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.eval_batch_size, num_workers=self.num_workers)
