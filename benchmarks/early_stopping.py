"""Cost of EarlyStopping's best-weights snapshot on torchvision resnet18 (CPU, batch 64 at 32x32, Adam).

Prints, as ratios (medians over repeats):
* one snapshot (collect local tensors + ``torch._foreach_copy_`` into reused buffers) / one training step
  (target <= 0.03);
* one snapshot / one plain copy of the state dict's bytes (a single preallocated memcpy; target <= 2);
* restore / the same memcpy;
* extra memory (snapshot bytes vs state-dict bytes; RSS growth over repeated snapshots: must not grow);
* bytes written to disk by a short ``fit`` with the default mode (must be 0) and by the same fit with
  ``snapshot="checkpoint"`` + ``ModelCheckpoint(save_top_k=1)``;
* the ModelCheckpoint route measured in the same run: ``trainer.save_checkpoint`` (what ModelCheckpoint
  does at every improvement, Adam state included) and reload (``torch.load`` + ``load_state_dict``).

Run: ``python benchmarks/early_stopping.py`` (add ``--repeats N``). Say whether the machine was quiet.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import EarlyStopping
from lightning_reg.early_stopping.snapshot import WeightSnapshot, local_snapshot_tensors

BEST: dict[str, float] = {}


def median_time(fn, repeats: int, warmup: int = 2, name: str = "") -> float:
    """Median wall time of ``fn``; the fastest run is kept in ``BEST[name]`` (robust under contention)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if name:
        BEST[name] = min(times)
    return statistics.median(times)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loaders():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g))
    return DataLoader(data, batch_size=64), DataLoader(data, batch_size=64)


def short_fit(root: Path, checkpoint_route: bool) -> tuple[float, int, EarlyStopping]:
    L.seed_everything(0)
    model = Classifier()
    es = EarlyStopping("val_loss", patience=100, snapshot="checkpoint" if checkpoint_route else "cpu")
    callbacks = [es]
    if checkpoint_route:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", monitor="val_loss", save_top_k=1))
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint_route,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(model, *loaders())
    return time.perf_counter() - t0, dir_bytes(root), es


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")

    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    t_step = median_time(train_step, max(5, args.repeats // 2), name="step")

    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    src_flat = torch.empty(state_bytes, dtype=torch.uint8).random_()
    dst_flat = torch.empty(state_bytes, dtype=torch.uint8)
    dst_flat.copy_(src_flat)
    t_memcpy = median_time(lambda: dst_flat.copy_(src_flat), args.repeats, name="memcpy")
    t_deepcopy = median_time(lambda: copy.deepcopy(model.state_dict()), max(3, args.repeats // 3))

    snap = WeightSnapshot("cpu")
    rss0 = rss_bytes()
    snap.capture(local_snapshot_tensors(model))
    rss1 = rss_bytes()
    w0 = wchar()
    t_snap = median_time(lambda: snap.capture(local_snapshot_tensors(model)), args.repeats, name="snap")
    for _ in range(20):
        snap.capture(local_snapshot_tensors(model))
    rss2 = rss_bytes()
    t_restore = median_time(lambda: snap.restore(local_snapshot_tensors(model)), args.repeats, name="restore")
    w_snap = wchar() - w0

    print(f"state dict: {state_bytes / 2**20:.1f} MiB in {len(model.state_dict())} tensors")
    print(f"train step (fwd+bwd+Adam):       {t_step * 1e3:8.2f} ms")
    print(f"plain memcpy of state bytes:     {t_memcpy * 1e3:8.2f} ms")
    print(f"copy.deepcopy(state_dict):       {t_deepcopy * 1e3:8.2f} ms")
    print(f"snapshot (collect + foreach):    {t_snap * 1e3:8.2f} ms")
    print(f"restore (foreach):               {t_restore * 1e3:8.2f} ms")
    print(f"RATIO snapshot / train step:     {t_snap / t_step:8.4f}   (target <= 0.03)")
    print(f"RATIO snapshot / memcpy:         {t_snap / t_memcpy:8.2f}   (target <= 2)")
    print(f"RATIO restore / memcpy:          {t_restore / t_memcpy:8.2f}")
    print(
        "fastest runs (less sensitive to a contended CPU): snapshot / train step"
        f" {BEST['snap'] / BEST['step']:.4f}, snapshot / memcpy {BEST['snap'] / BEST['memcpy']:.2f},"
        f" restore / memcpy {BEST['restore'] / BEST['memcpy']:.2f}"
    )
    print(f"RATIO deepcopy / snapshot:       {t_deepcopy / t_snap:8.2f}")
    print(
        f"memory: snapshot buffers {snap.nbytes / 2**20:.1f} MiB"
        f" (equal to state dict: {snap.nbytes == state_bytes})"
        f"; RSS +{(rss1 - rss0) / 2**20:.1f} MiB at first snapshot, +{(rss2 - rss1) / 2**20:.1f} MiB after"
        f" {args.repeats + 22} more (must not grow)"
    )
    print(f"bytes written by {args.repeats + 22} snapshots + restores (wchar): {w_snap}")

    # The ModelCheckpoint(save_top_k=1) + reload route, same model inside a Trainer with Adam state
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t_fit_mem, written_mem, es_mem = short_fit(root / "mem", checkpoint_route=False)
        t_fit_ckpt, written_ckpt, es_ckpt = short_fit(root / "ckpt", checkpoint_route=True)
        print(
            f"short fit (3 epochs x 2 steps + val), default snapshot: {t_fit_mem:.2f} s,"
            f" bytes on disk {written_mem}"
        )
        print(
            f"short fit, snapshot='checkpoint' + ModelCheckpoint(save_top_k=1): {t_fit_ckpt:.2f} s,"
            f" bytes on disk {written_ckpt}"
        )
        model_l = Classifier()
        trainer = L.Trainer(
            max_steps=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=tmp,
        )
        trainer.fit(model_l, loaders()[0])
        path = root / "route.ckpt"
        t_save = median_time(lambda: trainer.save_checkpoint(path), max(3, args.repeats // 3), warmup=1)

        def reload() -> None:
            ckpt = torch.load(path, weights_only=False)
            model_l.load_state_dict(ckpt["state_dict"])

        t_reload = median_time(reload, max(3, args.repeats // 3), warmup=1)
        print(
            f"checkpoint route: save {t_save * 1e3:.1f} ms ({path.stat().st_size / 2**20:.1f} MiB file),"
            f" reload {t_reload * 1e3:.1f} ms"
        )
        print(f"RATIO checkpoint save / snapshot:  {t_save / t_snap:8.1f}")
        print(f"RATIO checkpoint reload / restore: {t_reload / t_restore:8.1f}")


if __name__ == "__main__":
    main()
