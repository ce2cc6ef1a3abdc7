"""Overhead of OverfittingMonitor against a plain Lightning fit (and the cost of the eval-mode probe).

Run: ``PYTHONPATH=. python benchmarks/overfitting_monitor.py [--epochs 6] [--repeats 3]``
Prints the median wall time per fit and the ratio against the plain run (``benchmarks/harness.py``: setups
interleaved round by round, medians, per-round paired ratios) and writes
``benchmarks/results/overfitting_monitor.json`` and ``docs/benchmarks/results/overfitting_monitor.md``.
The monitor does no per-step work; its cost is one all-reduce (DDP only) and a handful of epoch-level logs
per check. The probe adds one eval-mode pass over its subset per validation: about probe_size / val_size
times the validation cost.
"""

import argparse
import shlex
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, time_interleaved  # noqa: E402
from lightning_reg import OverfittingMonitor  # noqa: E402
from tests.helpers import LossModule, fast_trainer  # noqa: E402


def mlp() -> LossModule:
    net = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))
    return LossModule(net, partial(torch.optim.Adam, lr=1e-3))


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


def fit(callbacks, epochs, train, val) -> None:
    L.seed_everything(0, verbose=False)
    trainer = fast_trainer(max_epochs=epochs, callbacks=callbacks)
    trainer.fit(mlp(), train, val)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    report = Report(
        "overfitting_monitor",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/overfitting_monitor.py", *sys.argv[1:]]),
        title="OverfittingMonitor: overhead on a whole fit, with and without the eval-mode probe",
    )
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
    hooks: dict[str, list[float]] = {name: [] for name in setups}

    def run(name: str):
        def one_fit() -> None:
            TimedMonitor.hook_seconds = 0.0
            fit(setups[name](), args.epochs, train, val)
            hooks[name].append(TimedMonitor.hook_seconds)

        return one_fit

    # interleaved so drift hits every setup alike; the warm-up fit above stands for the harness's warm-up
    t = time_interleaved({name: run(name) for name in setups}, rounds=args.repeats, warmup=0)
    base = "plain Lightning"
    section = f"MLP 40-256-10, 4000 train / 1000 val, bs 32, {args.epochs} epochs"
    for name in setups:
        med = t.median(name)
        report.add(section, name, med, unit="s", column="whole fit")
        if name != base:
            report.add(section, name, t.ratio(name, base), unit="x", column="ratio to plain", summary=True)
            hook_s = statistics.median(hooks[name])
            report.add(section, name, 1000 * hook_s / args.epochs, unit="ms/epoch", column="in monitor hooks")
            # the claim: the monitor's own hooks take under 1 % of a small fit without the probe
            report.add(section, name, 100 * hook_s / med, unit="%", column="share of fit in monitor hooks",
                       target="< 1" if "probe" not in name else "", summary=True)
    report.note(
        f"Whole-fit wall times are medians of {args.repeats} interleaved rounds (Trainer construction"
        " included); ratios are paired per round (geometric mean, 95 % interval). The time inside the"
        " monitor's own hooks (`on_validation_end`, `on_train_epoch_end`) is summed per fit: its share of the"
        " fit is the number to read on a busy machine, where whole-fit differences of a few percent are"
        " noise."
    )
    report.save()


if __name__ == "__main__":
    main()
