"""Cost of EarlyStopping's best-weights snapshot on torchvision resnet18 (CPU, batch 64 at 32x32, Adam).

Prints, as ratios (medians and paired ratios of interleaved rounds, ``benchmarks/harness.py``):
* one snapshot (collect local tensors + ``torch._foreach_copy_`` into reused buffers) / one training step
  (target <= 0.03);
* one snapshot / one plain copy of the state dict's bytes (a single preallocated memcpy; target <= 2);
* restore / the same memcpy;
* extra memory (snapshot bytes vs state-dict bytes; RSS growth over repeated snapshots: must not grow);
* bytes written to disk by a short ``fit`` with the default mode (must be 0) and by the same fit with
  ``snapshot="checkpoint"`` + ``ModelCheckpoint(save_top_k=1)``;
* the ModelCheckpoint route measured in the same run: ``trainer.save_checkpoint`` (what ModelCheckpoint
  does at every improvement, Adam state included) and reload (``torch.load`` + ``load_state_dict``).

Run: ``PYTHONPATH=. python benchmarks/early_stopping.py`` (add ``--repeats N``). Writes
``benchmarks/results/early_stopping.json`` and ``docs/benchmarks/results/early_stopping.md`` (with the load
average, to tell a quiet machine from a busy one).
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, default_guard, time_interleaved  # noqa: E402
from lightning_reg import EarlyStopping  # noqa: E402
from lightning_reg.early_stopping.snapshot import WeightSnapshot, local_snapshot_tensors  # noqa: E402
from tests.helpers import fast_trainer  # noqa: E402


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
    trainer = fast_trainer(
        max_epochs=3, enable_checkpointing=checkpoint_route, default_root_dir=str(root), callbacks=callbacks
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
    report = Report(
        "early_stopping",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/early_stopping.py", *sys.argv[1:]]),
        title="EarlyStopping: best-weights snapshot cost (resnet18, CPU, batch 64 at 32x32, Adam)",
    )

    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    src_flat = torch.empty(state_bytes, dtype=torch.uint8).random_()
    dst_flat = torch.empty(state_bytes, dtype=torch.uint8)
    dst_flat.copy_(src_flat)

    # Memory and disk first, with nothing else allocating: the buffers are allocated at the first snapshot
    # only, later snapshots and restores reuse them and write nothing to disk.
    snap = WeightSnapshot("cpu")
    rss0 = rss_bytes()
    snap.capture(local_snapshot_tensors(model))
    rss1 = rss_bytes()
    w0 = wchar()
    more = args.repeats + 22
    for _ in range(more):
        snap.capture(local_snapshot_tensors(model))
        snap.restore(local_snapshot_tensors(model))
    rss2 = rss_bytes()
    w_snap = wchar() - w0

    t = time_interleaved(
        {
            "train step": train_step,
            "memcpy": lambda: dst_flat.copy_(src_flat),
            "snapshot": lambda: snap.capture(local_snapshot_tensors(model)),
            "restore": lambda: snap.restore(local_snapshot_tensors(model)),
            "deepcopy": lambda: copy.deepcopy(model.state_dict()),
        },
        rounds=args.repeats,
    )
    section = "snapshot (in memory)"
    mib = state_bytes / 2**20
    report.add(section, "state dict", f"{mib:.1f} MiB in {len(model.state_dict())} tensors")
    report.add(section, "train step (fwd + bwd + Adam)", t.median("train step") * 1e3, unit="ms")
    report.add(section, "plain memcpy of the state bytes", t.median("memcpy") * 1e3, unit="ms")
    report.add(section, "copy.deepcopy(state_dict)", t.median("deepcopy") * 1e3, unit="ms")
    report.add(section, "snapshot (collect + foreach copy)", t.median("snapshot") * 1e3, unit="ms")
    report.add(section, "restore (foreach copy)", t.median("restore") * 1e3, unit="ms")
    report.add(
        section,
        "snapshot / train step",
        t.ratio("snapshot", "train step"),
        unit="x",
        target="<= 0.03",
        summary=True,
    )
    report.add(
        section, "snapshot / memcpy", t.ratio("snapshot", "memcpy"), unit="x", target="<= 2", summary=True
    )
    report.add(section, "restore / memcpy", t.ratio("restore", "memcpy"), unit="x")
    report.add(section, "deepcopy / snapshot", t.ratio("deepcopy", "snapshot"), unit="x")
    report.add(
        "memory and disk",
        "snapshot buffers",
        f"{snap.nbytes / 2**20:.1f} MiB",
        note=f"equal to the state dict: {snap.nbytes == state_bytes}",
    )
    report.add("memory and disk", "RSS growth at the first snapshot", (rss1 - rss0) / 2**20, unit="MiB")
    report.add(
        "memory and disk",
        f"RSS growth over {more} further snapshots + restores",
        (rss2 - rss1) / 2**20,
        unit="MiB",
        target="0 (must not grow)",
        summary=True,
    )
    report.add(
        "memory and disk",
        f"bytes written by {more} snapshots + restores (wchar)",
        float(w_snap),
        unit="B",
        target="0",
        summary=True,
    )

    # The ModelCheckpoint(save_top_k=1) + reload route, same model inside a Trainer with Adam state
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # one fit each, on a quiet machine (the load guard), not paired: these rows are context
        fits, _ = default_guard().run(
            lambda: (
                short_fit(root / "mem", checkpoint_route=False),
                short_fit(root / "ckpt", checkpoint_route=True),
            ),
            label="3-epoch fits",
        )
        (t_fit_mem, written_mem, _), (t_fit_ckpt, written_ckpt, _) = fits
        section = "3-epoch fit (3 x 2 steps + validation)"
        report.add(section, "default (snapshot='cpu'): time", t_fit_mem, unit="s")
        report.add(
            section, "default (snapshot='cpu'): bytes on disk", float(written_mem), unit="B", target="0"
        )
        report.add(
            section, "snapshot='checkpoint' + ModelCheckpoint(save_top_k=1): time", t_fit_ckpt, unit="s"
        )
        report.add(
            section,
            "snapshot='checkpoint' + ModelCheckpoint(save_top_k=1): bytes on disk",
            written_ckpt / 1e6,
            unit="MB",
        )
        model_l = Classifier()
        trainer = fast_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp)
        trainer.fit(model_l, loaders()[0])
        path = root / "route.ckpt"

        def reload() -> None:
            ckpt = torch.load(path, weights_only=False)
            model_l.load_state_dict(ckpt["state_dict"])

        trainer.save_checkpoint(path)
        c = time_interleaved(
            {"save": lambda: trainer.save_checkpoint(path), "reload": reload},
            rounds=max(3, args.repeats // 3),
            warmup=1,
        )
        section = "ModelCheckpoint route"
        size = path.stat().st_size / 2**20
        report.add(
            section,
            f"trainer.save_checkpoint ({size:.1f} MiB file, Adam state)",
            c.median("save") * 1e3,
            unit="ms",
        )
        report.add(section, "reload (torch.load + load_state_dict)", c.median("reload") * 1e3, unit="ms")
        # the route the snapshot replaces must cost more than it (ratio of medians of separate rounds)
        report.add(
            section,
            "checkpoint save / snapshot",
            c.median("save") / t.median("snapshot"),
            unit="x",
            target=">= 1",
            summary=True,
        )
        report.add(section, "checkpoint reload / restore", c.median("reload") / t.median("restore"), unit="x")
    report.note(
        "In-memory timings: medians of interleaved rounds (train step, memcpy, snapshot, restore, deepcopy);"
        " a ratio within a section is paired per round (geometric mean, 95 % interval). The ModelCheckpoint"
        " route is timed in its own rounds; its ratios are ratios of medians (no interval)."
    )
    report.save()


if __name__ == "__main__":
    main()
