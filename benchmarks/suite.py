"""The whole suite against a plain Lightning fit: where does the time go?

Run: ``PYTHONPATH=. python benchmarks/suite.py [--rounds 30] [--epochs 3]``

One MLP (256-1024-1024-10, batch 64, about 15 ms per training step on one CPU thread) fitted for a few
epochs, plain and with: four callbacks that override nothing (what Lightning's hook dispatch costs for
four callbacks), Lightning's own ``gradient_clip_val`` (what clipping by norm costs anywhere), two of the
callbacks alone, and the whole suite (restoring ``EarlyStopping``, ``GradientMonitor``,
``GradientClipping("norm")``, ``OverfittingMonitor``). Fits are interleaved round by round
(``benchmarks/harness.py``); each ratio is the geometric mean of the per-round ratios with its 95 %
interval. The time spent inside each callback's own hooks is summed per fit, so a whole-fit difference can
be split into "our hooks" and "the rest" (Lightning's logging of the extra keys, the clipping arithmetic).

Writes ``benchmarks/results/suite.json`` and ``docs/benchmarks/results/suite.md``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, time_interleaved  # noqa: E402
from lightning_reg import EarlyStopping, GradientClipping, GradientMonitor, OverfittingMonitor  # noqa: E402
from tests.helpers import LossModule, fast_trainer  # noqa: E402

HOOK_SECONDS: dict[str, float] = {}


def timed_hooks(cb: Callback) -> Callback:
    """Wrap every ``on_*`` / ``setup`` / ``teardown`` hook of ``cb`` so its wall time adds to HOOK_SECONDS."""
    for name in dir(type(cb)):
        if not (name.startswith("on_") or name in ("setup", "teardown")):
            continue
        method = getattr(cb, name)
        if not callable(method) or getattr(type(cb), name) is getattr(Callback, name, None):
            continue  # hooks the callback does not override cost nothing of ours

        def wrapper(*args: Any, _m: Callable[..., Any] = method, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _m(*args, **kwargs)
            finally:
                HOOK_SECONDS["total"] = HOOK_SECONDS.get("total", 0.0) + time.perf_counter() - t0

        setattr(cb, name, wrapper)
    return cb


def mlp() -> LossModule:
    net = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    return LossModule(net, partial(torch.optim.Adam, lr=1e-3))


def suite() -> list[Callback]:
    return [
        EarlyStopping("val_loss", patience=50, restore_best_weights=True, verbose=False),
        GradientMonitor(verbose=False),
        GradientClipping("norm", max_norm=1.0, verbose=False),
        OverfittingMonitor({"loss": ("train_loss", "val_loss")}, verbose=False),
    ]


class Empty(Callback):
    """A callback that overrides nothing: what Lightning's hook dispatch costs per callback."""


SETUPS: dict[str, tuple[Callable[[], list[Callback]], dict[str, Any]]] = {
    "plain Lightning": (lambda: [], {}),
    "four empty callbacks": (lambda: [Empty() for _ in range(4)], {}),
    "Lightning gradient_clip_val=1.0": (lambda: [], {"gradient_clip_val": 1.0}),
    "GradientClipping('norm')": (lambda: suite()[2:3], {}),
    "GradientMonitor": (lambda: suite()[1:2], {}),
    "suite without clipping": (lambda: [cb for i, cb in enumerate(suite()) if i != 2], {}),
    "whole suite": (suite, {}),
}
#: ``{setup: (the setup it is compared with, target)}``: clipping's arithmetic is compared with Lightning's
#: own clipping (the same arithmetic anywhere), everything else with the plain fit.
COMPARED: dict[str, tuple[str, str]] = {
    "four empty callbacks": ("plain Lightning", ""),
    "Lightning gradient_clip_val=1.0": ("plain Lightning", ""),
    "GradientClipping('norm')": ("Lightning gradient_clip_val=1.0", "<= 1.02"),
    "GradientMonitor": ("plain Lightning", "<= 1.02"),
    "suite without clipping": ("plain Lightning", "<= 1.02"),
    "whole suite": ("Lightning gradient_clip_val=1.0", "<= 1.02"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    report = Report(
        "suite",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/suite.py", *sys.argv[1:]]),
        title="The whole suite against a plain fit (MLP, about 10 ms per step, CPU, one thread)",
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3200, 256, generator=g), torch.randint(0, 10, (3200,), generator=g)
    xv, yv = torch.randn(800, 256, generator=g), torch.randint(0, 10, (800,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=256)
    hooks: dict[str, list[float]] = {name: [] for name in SETUPS}

    def run(name: str) -> Callable[[], None]:
        make, trainer_args = SETUPS[name]

        def one_fit() -> None:
            HOOK_SECONDS.clear()
            L.seed_everything(0, verbose=False)
            trainer = fast_trainer(
                max_epochs=args.epochs, callbacks=[timed_hooks(cb) for cb in make()], **trainer_args
            )
            trainer.fit(mlp(), train, val)
            hooks[name].append(HOOK_SECONDS.get("total", 0.0))

        return one_fit

    t = time_interleaved({name: run(name) for name in SETUPS}, rounds=args.rounds, warmup=1)
    base = "plain Lightning"
    steps = args.epochs * len(train)
    section = f"MLP 256-1024-1024-10, 3200 train / 800 val, batch 64, {args.epochs} epochs ({steps} steps)"
    for name in SETUPS:
        report.add(section, name, 1000 * t.median(name) / steps, unit="ms", column="per training step")
        if name == base:
            continue
        reference, target = COMPARED[name]
        report.add(section, name, reference, column="compared with")
        report.add(
            section,
            name,
            t.ratio(name, reference),
            unit="x",
            column="ratio",
            target=target,
            summary=name in ("whole suite", "suite without clipping", "GradientClipping('norm')"),
        )
        share = 100 * statistics.median(hooks[name]) / t.median(name)
        report.add(section, name, share, unit="%", column="in our hooks")
    report.note(
        "Each fit builds its Trainer and model (both included); ratios are paired per round (geometric mean,"
        " 95 % t-interval on log ratios). 'In our hooks' is the median share of the fit spent inside the"
        " callbacks' own hook methods. Clipping by norm costs its arithmetic wherever it runs (a norm over"
        " every gradient and a scaling of every gradient, about 2 % of this step): the suite and"
        " `GradientClipping` are compared with Lightning's own `gradient_clip_val=1.0`, the rest with the"
        " plain fit."
    )
    report.save()


if __name__ == "__main__":
    main()
