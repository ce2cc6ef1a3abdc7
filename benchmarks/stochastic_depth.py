"""Stochastic-depth overheads: DropPath vs torchvision, and the scheduler's per-step cost.

1. ``drop_path`` / ``DropPath`` forward+backward against ``torchvision.ops.stochastic_depth`` /
   ``torchvision.ops.StochasticDepth`` on the same input (target: ratio <= 1.05).
2. ``StochasticDepthScheduler.on_train_batch_start`` with 100 drop-path modules, when the rate changes every
   step (worst case: a warm-up over the whole run) and when it does not (constant schedule), in
   microseconds per optimizer step (target: <= 50 us).

Run: ``PYTHONPATH=. python benchmarks/stochastic_depth.py`` (``--quick`` for a short run, ``--device cuda``
to time the drop-path part on a GPU). Timings come from ``benchmarks/harness.py``: variants interleaved
round by round, medians and per-round paired ratios; the process uses one intra-op thread. Writes
``benchmarks/results/stochastic_depth.json`` and ``docs/benchmarks/results/stochastic_depth.md``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torchvision.ops import StochasticDepth, stochastic_depth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, time_interleaved  # noqa: E402
from lightning_reg import DropPath, StochasticDepthScheduler, drop_path  # noqa: E402


def bench_drop_path(report: Report, rounds: int, number: int, device: str) -> None:
    print(
        f"== drop path forward+backward (p=0.2, row mode, float32, {device}); medians of {rounds} rounds =="
    )
    shapes = [(64, 256, 14, 14), (128, 197, 192), (256, 512)]
    if device.startswith("cuda"):
        shapes = [(256, 256, 56, 56), (256, 197, 768), (4096, 1024)]
    section = f"drop path fwd+bwd ({device})"
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        ours_mod, tv_mod = DropPath(0.2), StochasticDepth(0.2, "row")

        def run(
            f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor = x, grad: torch.Tensor = grad
        ) -> Callable[[], None]:
            def step() -> None:
                x.grad = None
                f(x).backward(grad)

            return step

        t = time_interleaved(
            {
                "tv_fn": run(lambda v: stochastic_depth(v, 0.2, "row", True)),
                "our_fn": run(lambda v: drop_path(v, 0.2, training=True, mode="row")),
                "tv_mod": run(tv_mod),
                "our_mod": run(ours_mod),
            },
            rounds=rounds,
            number=number,
            warmup=3,
            device=device,
        )
        s = "x".join(map(str, shape))
        report.add(section, "torchvision stochastic_depth", t.median("tv_fn") * 1e6, unit="us", column=s)
        report.add(section, "drop_path", t.median("our_fn") * 1e6, unit="us", column=s)
        report.add(
            section,
            "drop_path / stochastic_depth",
            t.ratio("our_fn", "tv_fn"),
            unit="x",
            target="<= 1.05",
            column=s,
            summary=True,
        )
        report.add(section, "torchvision StochasticDepth", t.median("tv_mod") * 1e6, unit="us", column=s)
        report.add(section, "DropPath", t.median("our_mod") * 1e6, unit="us", column=s)
        report.add(
            section,
            "DropPath / StochasticDepth",
            t.ratio("our_mod", "tv_mod"),
            unit="x",
            target="<= 1.05",
            column=s,
            summary=True,
        )


def bench_scheduler(report: Report, steps: int, rounds: int) -> None:
    print("== StochasticDepthScheduler per-step cost, 100 drop-path modules ==")
    model = nn.Sequential(*[nn.Sequential(DropPath(0.1)) for _ in range(100)])  # 100 depth levels
    cases = {
        "rate changes every step (warm-up over the run)": {
            "max_rate": 0.2,
            "schedule": "warmup",
            "cutoff": steps * (rounds + 4),
        },
        "rate unchanged (constant schedule)": {"max_rate": 0.2, "schedule": "constant"},
    }
    trainers: dict[str, SimpleNamespace] = {}
    callbacks: dict[str, StochasticDepthScheduler] = {}
    for label, kwargs in cases.items():
        trainer = SimpleNamespace(  # what the hooks read from a Trainer
            global_step=0,
            estimated_stepping_batches=steps * (rounds + 4),
            log_every_n_steps=50,
            loggers=[],
            callback_metrics={},
            logged_metrics={},
            should_stop=False,
            is_global_zero=True,
            num_training_batches=steps,
            accumulate_grad_batches=1,
        )
        cb = StochasticDepthScheduler(**kwargs)  # type: ignore[arg-type]
        cb.on_fit_start(trainer, model)  # type: ignore[arg-type]
        cb.on_train_start(trainer, model)  # type: ignore[arg-type]
        trainers[label], callbacks[label] = trainer, cb

    def one_step(label: str) -> Callable[[], None]:
        trainer, hook = trainers[label], callbacks[label].on_train_batch_start

        def step() -> None:
            trainer.global_step += 1  # a new optimizer step each call: the schedule advances
            hook(trainer, model, None, trainer.global_step)  # type: ignore[arg-type]

        return step

    t = time_interleaved({label: one_step(label) for label in cases}, rounds=rounds, number=steps, warmup=1)
    for label, cb in callbacks.items():
        cb.on_fit_end(trainers[label], model)  # type: ignore[arg-type]
    section = "scheduler per optimizer step"
    for label in cases:
        report.add(section, label, t.median(label) * 1e6, unit="us", target="<= 50", summary=True)
    # reference: the cheapest possible loop of 100 attribute writes
    mods = [block[0] for block in model]

    def bare() -> None:
        for m in mods:
            m.p = 0.1

    ref = time_interleaved({"bare": bare}, rounds=rounds, number=steps, warmup=1)
    report.add(section, "reference: 100 nn.Module.__setattr__ calls", ref.median("bare") * 1e6, unit="us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--device", default="cpu", help="device for the drop-path timings, e.g. cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no fit-start summaries
    report = Report(
        "stochastic_depth",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/stochastic_depth.py", *sys.argv[1:]]),
        title="Stochastic depth: DropPath vs torchvision, scheduler cost per step",
    )
    if args.quick:
        bench_drop_path(report, rounds=7, number=5, device=args.device)
        bench_scheduler(report, steps=2000, rounds=3)
    else:
        bench_drop_path(report, rounds=31, number=5, device=args.device)
        bench_scheduler(report, steps=10000, rounds=7)
    report.note(
        "Drop path: medians of interleaved rounds of 5 calls (forward + backward, p=0.2, row mode, float32);"
        " a ratio is paired per round (geometric mean, 95 % interval). Scheduler: microseconds per"
        " `on_train_batch_start` call with 100 depth levels, the rate written to every module on each step"
        " (warm-up) or skipped (constant)."
    )
    report.save()


if __name__ == "__main__":
    main()
