"""Overhead of OverfittingMonitor against a plain Lightning fit (and the cost of the eval-mode probe).

Run: python benchmarks/overfitting_monitor.py [--epochs 6] [--repeats 3]
Prints the median wall time per fit and the ratio against the plain run. The monitor does no per-step work;
its cost is one all-reduce (DDP only) and a handful of epoch-level logs per check. The probe adds one
eval-mode pass over its subset per validation: about probe_size / val_size times the validation cost.
"""

import argparse
import statistics
import time
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import OverfittingMonitor


class MLP(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class TimedMonitor(OverfittingMonitor):
    """Adds up the wall time spent inside the monitor's own hooks (robust to a contended machine)."""

    hook_seconds = 0.0

    def on_validation_end(self, trainer, pl_module):
        start = time.perf_counter()
        super().on_validation_end(trainer, pl_module)
        TimedMonitor.hook_seconds += time.perf_counter() - start

    def on_train_epoch_end(self, trainer, pl_module):
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        TimedMonitor.hook_seconds += time.perf_counter() - start


def fit(callbacks, epochs, train, val) -> float:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(MLP(), train, val)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 40, generator=g), torch.randint(0, 10, (4000,), generator=g)
    xv, yv = torch.randn(1000, 40, generator=g), torch.randint(0, 10, (1000,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=256)
    pairs = {"loss": ("train_loss", "val_loss")}
    criteria = {"gap": 0.5, "rel_gap": 0.5, "gl": 5.0, "pq": 0.5, "up": 3}
    setups = {
        "plain Lightning": lambda: [],
        "OverfittingMonitor (all 5 criteria)": lambda: [TimedMonitor(pairs, criteria, verbose=False)],
        "+ probe 0.05 of train (200 samples)": lambda: [
            TimedMonitor(pairs, criteria, probe=0.05, verbose=False)
        ],
        "+ probe 0.25 of train (1000 samples)": lambda: [
            TimedMonitor(pairs, criteria, probe=0.25, verbose=False)
        ],
    }
    fit([], 1, train, val)  # warm-up
    times = {name: [] for name in setups}
    hooks = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, make in setups.items():  # interleaved so drift hits every setup alike
            TimedMonitor.hook_seconds = 0.0
            times[name].append(fit(make(), args.epochs, train, val))
            hooks[name].append(TimedMonitor.hook_seconds)
    base = statistics.median(times["plain Lightning"])
    print(f"MLP 40-256-10, 4000 train / 1000 val, bs 32, {args.epochs} epochs, {args.repeats} repeats")
    for name, ts in times.items():
        med = statistics.median(ts)
        hook_ms = 1000 * statistics.median(hooks[name]) / args.epochs
        print(
            f"{name:<40} {med:7.3f} s   ratio {med / base:5.3f}   in monitor hooks {hook_ms:7.2f} ms/epoch "
            f"({100 * statistics.median(hooks[name]) / med:5.2f}% of fit)"
        )


if __name__ == "__main__":
    main()
