"""Stochastic-depth overheads: DropPath vs torchvision, and the scheduler's per-step cost.

1. ``drop_path`` / ``DropPath`` forward+backward against ``torchvision.ops.stochastic_depth`` /
   ``torchvision.ops.StochasticDepth`` on the same input (target: ratio <= 1.05).
2. ``StochasticDepthScheduler.on_train_batch_start`` with 100 drop-path modules, when the rate changes every
   step (worst case: a warm-up over the whole run) and when it does not (constant schedule), in
   microseconds per optimizer step (target: <= 50 us).

Run: ``python benchmarks/stochastic_depth.py`` (``--quick`` for a short run, ``--device cuda`` to time the
drop-path part on a GPU). Timings are the best (and, in brackets, the median) of interleaved repeats; the
process uses one intra-op thread.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torchvision.ops import StochasticDepth, stochastic_depth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg

from lightning_reg import (  # noqa: E402
    DropPath,
    StochasticDepthScheduler,  # noqa: E402
    drop_path,
)


def _best_time(
    fns: dict[str, Callable[[], object]], repeats: int, inner: int, sync: Callable[[], None]
) -> dict:
    """Interleave the candidates ``repeats`` times; return the best (min) seconds per call of each.

    The minimum over interleaved repeats is the most robust statistic on a contended machine (other
    processes only ever add time); the median is printed alongside.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(max(2, inner // 2)):
            fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / inner)
    return {k: (min(v), statistics.median(v)) for k, v in samples.items()}


def bench_drop_path(repeats: int, inner: int, device: str) -> None:
    print(
        f"== drop path forward+backward (p=0.2, row mode, float32, {device}); best of {repeats} (median) =="
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    shapes = [(64, 256, 14, 14), (128, 197, 192), (256, 512)]
    if device.startswith("cuda"):
        shapes = [(256, 256, 56, 56), (256, 197, 768), (4096, 1024)]
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

        t = _best_time(
            {
                "tv_fn": run(lambda v: stochastic_depth(v, 0.2, "row", True)),
                "our_fn": run(lambda v: drop_path(v, 0.2, training=True, mode="row")),
                "tv_mod": run(tv_mod),
                "our_mod": run(ours_mod),
            },
            repeats,
            inner,
            sync,
        )

        def us(k: str, t: dict = t) -> str:
            return f"{t[k][0] * 1e6:8.1f} ({t[k][1] * 1e6:8.1f}) us"

        print(
            f"shape {str(shape):18s} stochastic_depth {us('tv_fn')}  drop_path {us('our_fn')}"
            f"  ratio {t['our_fn'][0] / t['tv_fn'][0]:.3f}"
            f" | StochasticDepth {us('tv_mod')}  DropPath {us('our_mod')}"
            f"  ratio {t['our_mod'][0] / t['tv_mod'][0]:.3f}  (target <= 1.05)"
        )


def bench_scheduler(steps: int, repeats: int) -> None:
    print("== StochasticDepthScheduler per-step cost, 100 drop-path modules ==")
    model = nn.Sequential(*[nn.Sequential(DropPath(0.1)) for _ in range(100)])  # 100 depth levels
    cases = [
        (
            "rate changes every step (warmup over the run)",
            {"max_rate": 0.2, "schedule": "warmup", "cutoff": steps},
        ),
        ("rate unchanged (constant schedule)", {"max_rate": 0.2, "schedule": "constant"}),
    ]
    for label, kwargs in cases:
        per_step: list[float] = []  # best of `repeats` runs of `steps` steps
        for _ in range(repeats):
            cb = StochasticDepthScheduler(**kwargs)  # type: ignore[arg-type]
            trainer = SimpleNamespace(
                global_step=0,
                estimated_stepping_batches=steps,
                log_every_n_steps=50,
                loggers=[],
                num_training_batches=steps,
                accumulate_grad_batches=1,
            )
            cb.on_fit_start(trainer, model)  # type: ignore[arg-type]
            cb.on_train_start(trainer, model)  # type: ignore[arg-type]
            hook = cb.on_train_batch_start
            t0 = time.perf_counter()
            for step in range(1, steps):
                trainer.global_step = step
                hook(trainer, model, None, step)  # type: ignore[arg-type]
            per_step.append((time.perf_counter() - t0) / (steps - 1))
            cb.on_fit_end(trainer, model)  # type: ignore[arg-type]
        t, med = min(per_step), statistics.median(per_step)
        print(f"{label:48s} {t * 1e6:7.2f} ({med * 1e6:7.2f}) us/step  ratio to 50 us budget {t / 50e-6:.3f}")
    # reference: the cheapest possible loop of 100 attribute writes
    mods = [block[0] for block in model]
    t0 = time.perf_counter()
    for _ in range(steps):
        for m in mods:
            m.p = 0.1
    bare = (time.perf_counter() - t0) / steps
    print(f"{'(reference: 100 nn.Module.__setattr__ calls)':48s} {bare * 1e6:7.2f} us/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--device", default="cpu", help="device for the drop-path timings, e.g. cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no fit-start summaries
    if args.quick:
        bench_drop_path(repeats=7, inner=5, device=args.device)
        bench_scheduler(steps=2000, repeats=3)
    else:
        bench_drop_path(repeats=31, inner=5, device=args.device)
        bench_scheduler(steps=10000, repeats=7)


if __name__ == "__main__":
    main()
