"""Overhead of lightning_reg's gradient statistics and clipping vs plain baselines (CPU; CUDA if available).

Prints one table of ratios (``benchmarks/harness.py``: variants interleaved round by round, medians and
per-round paired ratios):

1. monitor (total + per-group norms) / ``torch.nn.utils.get_total_norm``          target <= 1.10
2. monitor + norm clipping / ``torch.nn.utils.clip_grad_norm_``                   target <= 1.10
3. ``lightning.pytorch.utilities.grad_norm`` + total / our per-tensor + total      target >= 2.0 (speed-up)
4. end-to-end Lightning training step, both callbacks / plain                     target <= 1.02

Run from the repository root:
``PYTHONPATH=. python benchmarks/gradients.py [--device cpu|cuda] [--reps 30] [--e2e-steps 15]``
``[--e2e-batch 64]`` (``--quick`` for a CI-sized run). Writes ``benchmarks/results/gradients.json`` and
``docs/benchmarks/results/gradients.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.utilities import grad_norm
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, Timings, time_interleaved  # noqa: E402
from lightning_reg import GradientClipping, GradientMonitor  # noqa: E402
from lightning_reg.gradients.functional import (  # noqa: E402
    clip_coefficient,
    group_by_module_depth,
    per_tensor_norms,
    reduce_norms,
    scale_grads_,
)
from tests.helpers import fast_trainer  # noqa: E402


def transformer(d: int = 128, layers: int = 12) -> nn.Module:
    layer = nn.TransformerEncoderLayer(d, 8, 4 * d, dropout=0.0, batch_first=True)
    return nn.Sequential(
        nn.Linear(32, d), nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(d, 10)
    )


def make_grads(model: nn.Module, kind: str, device: str) -> None:
    model.to(device)
    x = (
        torch.randn(8, 16, 32, device=device)
        if kind == "transformer"
        else torch.randn(8, 3, 64, 64, device=device)
    )
    model(x).float().pow(2).mean().backward()


def bench_pair(fa: Any, fb: Any, device: str, reps: int) -> tuple[float, float, float]:
    """``(median a, median b, median of per-round b / a)`` from one interleaved harness run."""
    t = time_interleaved({"a": fa, "b": fb}, rounds=reps, warmup=5, device=device)
    return t.median("a"), t.median("b"), t.ratio("b", "a")


def micro(kind: str, model: nn.Module, device: str, reps: int) -> dict[str, float]:
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    grouping = group_by_module_depth(model, depth=2 if kind == "transformer" else 1)
    ids = grouping.ids_for(params, device=torch.device(device))
    ng = len(grouping.names)
    saved = [g.clone() for g in grads]

    def restore() -> None:
        torch._foreach_copy_(grads, saved)

    def ours_monitor() -> Any:
        per = per_tensor_norms(grads, 2.0)
        return reduce_norms(per, 2.0, ids, ng)

    def ours_monitor_clip() -> Any:
        per = per_tensor_norms(grads, 2.0)
        total, groups = reduce_norms(per, 2.0, ids, ng)
        scale_grads_(grads, clip_coefficient(total, 1e9))  # threshold never hit: grads stay comparable
        return groups

    def ours_per_tensor() -> Any:
        per = per_tensor_norms(grads, 2.0)
        return per, reduce_norms(per, 2.0)[0]

    t_total, t_mon, r_mon = bench_pair(
        lambda: torch.nn.utils.get_total_norm(grads, 2.0), ours_monitor, device, reps
    )
    t_clip, t_monclip, r_clip = bench_pair(
        lambda: torch.nn.utils.clip_grad_norm_(params, 1e9), ours_monitor_clip, device, reps
    )
    t_pert, t_light, r_pert = bench_pair(ours_per_tensor, lambda: grad_norm(model, 2.0), device, reps)
    restore()
    return {
        "tensors": len(grads),
        "groups": ng,
        "get_total_norm_ms": t_total * 1e3,
        "monitor_ms": t_mon * 1e3,
        "ratio_monitor": r_mon,
        "clip_grad_norm_ms": t_clip * 1e3,
        "monitor_clip_ms": t_monclip * 1e3,
        "ratio_monitor_clip": r_clip,
        "lightning_grad_norm_ms": t_light * 1e3,
        "per_tensor_ms": t_pert * 1e3,
        "speedup_per_tensor": r_pert,
    }


class LitWrap(pl.LightningModule):
    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.net(x).float().pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)


def e2e(kind: str, device: str, steps: int, batch: int, rounds: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    n = steps * batch
    x = torch.randn(n, 16, 32) if kind == "transformer" else torch.randn(n, 3, 64, 64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=batch)
    med: dict[str, list[float]] = {"plain": [], "both": [], "lightning_clip": []}
    for _ in range(rounds):  # alternate to spread contention noise over the arms
        for arm in ("plain", "both", "lightning_clip"):
            net = transformer() if kind == "transformer" else torchvision.models.resnet18(num_classes=10)
            timer = StepTimer()
            cbs: list[pl.Callback] = [timer]
            if arm == "both":
                cbs = [
                    GradientMonitor(group_by="module", depth=2),
                    GradientClipping("norm", max_norm=1.0),
                    timer,
                ]
            trainer = fast_trainer(
                accelerator=device,
                devices=1,
                max_steps=steps,
                log_every_n_steps=50,
                callbacks=cbs,
                # the user's alternative to GradientClipping: Lightning's built-in norm clipping
                gradient_clip_val=1.0 if arm == "lightning_clip" else None,
            )
            trainer.fit(LitWrap(net, kind), loader)
            med[arm].append(statistics.median(timer.times[3:]))
    t = Timings(med)  # one median step time per arm and round: the harness's statistics, paired by round
    return {
        "step_plain_ms": t.median("plain") * 1e3,
        "step_both_ms": t.median("both") * 1e3,
        "step_lightning_clip_ms": t.median("lightning_clip") * 1e3,
        "ratio_e2e": t.ratio("both", "plain"),
        "ratio_e2e_vs_lightning_clip": t.ratio("both", "lightning_clip"),
    }


def fixed_cost_per_tensor(device: str, reps: int, n: int = 512) -> tuple[float, float]:
    """Per-tensor fixed cost (us) of ours vs Lightning's ``grad_norm`` on ``n`` tiny (16-element) gradients.

    With tiny tensors the bytes read are negligible, so the time per tensor is the per-call overhead the
    ">= 2x faster per tensor" target is about (DESIGN.md: foreach ~2 us, Lightning's loop ~5 us here).
    """
    torch.manual_seed(0)
    model = nn.ParameterList([nn.Parameter(torch.randn(4, 4, device=device)) for _ in range(n)])
    for p in model:
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in model]

    def ours() -> Any:
        per = per_tensor_norms(grads, 2.0)
        return per, reduce_norms(per, 2.0)[0]

    t_ours, t_light, _ = bench_pair(ours, lambda: grad_norm(model, 2.0), device, reps)
    return t_ours / n * 1e6, t_light / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--e2e-steps", type=int, default=15)
    ap.add_argument("--e2e-batch", type=int, default=64, help="batch size of the end-to-end steps")
    ap.add_argument("--e2e-rounds", type=int, default=3, help="rounds of the end-to-end arms")
    ap.add_argument("--skip-e2e", action="store_true", help="only the micro-benchmarks")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: --reps 8 --e2e-steps 6 --e2e-batch 16")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.e2e_steps, a.e2e_batch, a.e2e_rounds = 8, 6, 16, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    print(
        f"device={a.device} torch={torch.__version__} lightning={pl.__version__}"
        f" threads={torch.get_num_threads()}"
    )
    report = Report(
        "gradients",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/gradients.py", *sys.argv[1:]]),
        title=f"Gradient monitoring and clipping against plain baselines ({a.device})",
    )
    report.note(f"Load average (1 min) at the start: {os.getloadavg()[0]:.2f}.")
    us_ours, us_light = fixed_cost_per_tensor(a.device, a.reps)
    section = "fixed cost per tensor (512 tiny gradients)"
    report.add(section, "ours (per-tensor norms + total)", us_ours, unit="us")
    report.add(section, "Lightning grad_norm", us_light, unit="us")
    report.add(section, "speed-up", us_light / us_ours, unit="x", target=">= 2")
    for kind in ("transformer", "resnet18"):
        torch.manual_seed(0)
        model = transformer() if kind == "transformer" else torchvision.models.resnet18(num_classes=10)
        make_grads(model, kind, a.device)
        r = micro(kind, model, a.device, a.reps)
        print(f"[{kind}] micro-benchmarks done", flush=True)
        if not a.skip_e2e:
            r.update(e2e(kind, a.device, a.e2e_steps, a.e2e_batch, rounds=a.e2e_rounds))
        section = f"{kind}: {r['tensors']} grad tensors, {r['groups']} groups"
        report.add(section, "monitor (total + groups)", r["monitor_ms"], unit="ms")
        report.add(section, "torch get_total_norm", r["get_total_norm_ms"], unit="ms")
        report.add(section, "monitor / get_total_norm", r["ratio_monitor"], unit="x", target="<= 1.10")
        report.add(section, "monitor + norm clip", r["monitor_clip_ms"], unit="ms")
        report.add(section, "torch clip_grad_norm_", r["clip_grad_norm_ms"], unit="ms")
        report.add(
            section,
            "monitor + norm clip / clip_grad_norm_",
            r["ratio_monitor_clip"],
            unit="x",
            target="<= 1.10",
        )
        report.add(section, "per-tensor + total (ours)", r["per_tensor_ms"], unit="ms")
        report.add(section, "Lightning grad_norm", r["lightning_grad_norm_ms"], unit="ms")
        report.add(
            section,
            "per-tensor: Lightning / ours (speed-up)",
            r["speedup_per_tensor"],
            unit="x",
            target=">= 2",
        )
        if a.skip_e2e:
            continue
        report.add(section, "end-to-end step, plain", r["step_plain_ms"], unit="ms")
        report.add(
            section, "end-to-end step, Trainer(gradient_clip_val=1.0)", r["step_lightning_clip_ms"], unit="ms"
        )
        report.add(section, "end-to-end step, both callbacks", r["step_both_ms"], unit="ms")
        report.add(section, "end-to-end: both callbacks / plain", r["ratio_e2e"], unit="x", target="<= 1.02")
        report.add(
            section,
            "end-to-end: both callbacks / Trainer(gradient_clip_val=1.0)",
            r["ratio_e2e_vs_lightning_clip"],
            unit="x",
        )
    report.note(
        f"Micro-benchmarks: {a.reps} interleaved rounds, medians; ratios are medians of per-round paired"
        " ratios."
        f" End-to-end: a Lightning `fit` of {a.e2e_steps} steps at batch {a.e2e_batch} with AdamW;"
        ' `GradientMonitor(group_by="module", depth=2)` + `GradientClipping("norm", max_norm=1.0)` against'
        f" the same fit without them and against `Trainer(gradient_clip_val=1.0)`; {a.e2e_rounds} rounds of"
        " the three arms, each round's median step time (first 3 steps dropped), ratios paired by round."
    )
    report.save()


if __name__ == "__main__":
    main()
