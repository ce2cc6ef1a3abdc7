"""Compiled training step with a changing drop-path/dropout schedule against a constant rate.

A residual MLP (``--blocks`` blocks of width ``--width``, batch ``--batch``) with a lightning_reg
``DropPath`` in every block, a torchvision ``StochasticDepth``, a timm ``DropPath`` and an ``nn.Dropout``,
compiled with ``torch.compile`` (``--backend``, default inductor). Three numbers:

1. **Graphs** over a 30-step warm-up schedule, counted by dynamo (``torch._dynamo.utils.counters``), with
   rates written as float attributes (what the scheduler did before) and with rates held in a tensor
   (:class:`lightning_reg.stochastic_depth.rate_tensor.ScheduledRates`, what it does now). Counted with the
   cheap ``eager`` backend; the counts do not depend on the backend.
2. **Step time** (forward, backward, SGD step) of the compiled model whose rates change at every step,
   over the same compiled model at a constant rate: the ratio is the cost of scheduling under compile
   (target <= 1.02). The eager step is timed too: it is what the float-attribute version runs after
   dynamo's recompile limit (8) is hit.
3. **Draws**: the masks of every kind of module (side by side on one input) over 6 steps of a changing
   schedule, compiled against eager, with inductor's ``fallback_random`` on and off. A ``bernoulli_``
   with a tensor probability is not replaced by inductor's own random numbers, so both are expected
   equal (with float rates, inductor draws its own numbers unless ``fallback_random=True``).

Run: ``PYTHONPATH=. python benchmarks/compile_schedule.py [--device cpu|cuda] [--backend inductor]
[--rounds 30]``. One intra-op thread on CPU.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch._dynamo
import torch._inductor.config
import torchvision
from torch import Tensor, nn
from torch._dynamo.utils import counters

from benchmarks.harness import Report, time_interleaved
from lightning_reg import DropPath
from lightning_reg.stochastic_depth.layers import find_drop_rate_modules
from lightning_reg.stochastic_depth.rate_tensor import ScheduledRates

try:
    from timm.layers import DropPath as TimmDropPath
except ImportError:  # pragma: no cover
    TimmDropPath = None


class Block(nn.Module):
    def __init__(self, width: int, drop: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(torch.relu(self.fc1(self.norm(x)))))


def make_model(blocks: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    drops: list[nn.Module] = [DropPath(0.1) for _ in range(blocks)]
    drops[-2] = torchvision.ops.StochasticDepth(0.1, "row")
    if TimmDropPath is not None:
        drops[-1] = TimmDropPath(0.1)
    return nn.Sequential(*[Block(width, d) for d in drops], nn.Dropout(0.1), nn.Linear(width, 10))


def warmup(step: int, total: int = 30) -> float:
    return min(1.0, step / total)


class Trainer:
    """One SGD step per call on fixed data; ``scheduled`` changes every rate at every step."""

    def __init__(
        self, model: nn.Module, backend: str | None, device: str, batch: int, scheduled: bool
    ) -> None:
        self.model = model.to(device)
        self.forward = torch.compile(model, backend=backend) if backend else model
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        width = model[0].norm.normalized_shape[0]
        self.x = torch.randn(batch, width, generator=g).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)
        self.step_index = 0
        self.table: ScheduledRates | None = None
        if scheduled:
            found = find_drop_rate_modules(model, include_dropout=True)
            targets = [float(getattr(f.module, f.attr)) for f in found]
            self.table = ScheduledRates(found, targets, device)

    def step(self) -> Tensor:
        if self.table is not None:  # a new rate every step: a multiplier cycling over 1000 steps
            s = self.step_index % 1000
            self.table.apply(0.001 + s / 1000, 0.001 + (s + 1) / 1000)
        self.step_index += 1
        loss = nn.functional.cross_entropy(self.forward(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def count_graphs(model: nn.Module, schedule_writes: Callable[[int], None], steps: int = 30) -> dict[str, int]:
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(8, model[0].norm.normalized_shape[0])
    for step in range(steps):
        schedule_writes(step)
        compiled(x).sum().backward()
    out = {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": sum(counters["graph_break"].values()),
        "recompile_limit_hit": int(any("recompile limit" in k for k in counters["unimplemented"])),
    }
    torch._dynamo.reset()
    return out


def graphs_before_after(blocks: int, width: int) -> tuple[dict[str, int], dict[str, int]]:
    model = make_model(blocks, width)
    found = find_drop_rate_modules(model, include_dropout=True)
    targets = [float(getattr(f.module, f.attr)) for f in found]

    def float_writes(step: int) -> None:
        for f, t in zip(found, targets):
            setattr(f.module, f.attr, t * warmup(step))

    before = count_graphs(model, float_writes)
    model = make_model(blocks, width)
    found = find_drop_rate_modules(model, include_dropout=True)
    table = ScheduledRates(found, targets, "cpu")
    after = count_graphs(model, lambda step: table.apply(warmup(step), warmup(step + 1)))
    table.release()
    return before, after


class DropsOnly(nn.Module):
    """Every kind of scheduled module applied side by side to the same input (so each mask is visible)."""

    def __init__(self) -> None:
        super().__init__()
        drops: list[nn.Module] = [DropPath(0.2), torchvision.ops.StochasticDepth(0.2, "row"), nn.Dropout(0.2)]
        if TimmDropPath is not None:
            drops.append(TimmDropPath(0.2))
        self.drops = nn.ModuleList(drops)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([d(x) for d in self.drops])


def masks(backend: str | None, device: str, steps: int = 6) -> list[Tensor]:
    """Which elements each module dropped, over ``steps`` steps of a changing schedule."""
    torch._dynamo.reset()
    model = DropsOnly().to(device)
    found = find_drop_rate_modules(model, include_dropout=True)
    table = ScheduledRates(found, [0.2] * len(found), device)
    forward = torch.compile(model, backend=backend) if backend else model
    x = torch.rand(64, 32, device=device) + 0.5  # strictly positive: an output of 0 means dropped
    torch.manual_seed(123)
    out = []
    for step in range(steps):
        table.apply((step + 1) / steps, (step + 2) / steps)
        out.append((forward(x) == 0).cpu())
    table.release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--number", type=int, default=5, help="steps per timed sample")
    a = ap.parse_args()
    torch.set_num_threads(1)
    command = (
        f"PYTHONPATH=. python benchmarks/compile_schedule.py --device {a.device} --backend {a.backend}"
        f" --rounds {a.rounds}"
    )
    report = Report(
        "compile_schedule", command, title=f"Scheduled rates under torch.compile ({a.backend}, {a.device})"
    )

    before, after = graphs_before_after(a.blocks, a.width)
    report.add(
        "graphs (30-step warm-up)", "rates as float attributes: graphs", str(before["graphs"]), summary=True
    )
    report.add(
        "graphs (30-step warm-up)",
        "rates as float attributes: recompile limit hit",
        "yes" if before["recompile_limit_hit"] else "no",
    )
    section = "graphs (30-step warm-up)"
    report.add(section, "rates in a tensor: graphs", str(after["graphs"]), target="1", summary=True)
    breaks = str(after["graph_breaks"])
    report.add(section, "rates in a tensor: graph breaks", breaks, target="0", summary=True)

    torch._dynamo.reset()
    counters.clear()
    base = make_model(a.blocks, a.width)
    constant = Trainer(copy.deepcopy(base), a.backend, a.device, a.batch, scheduled=False)
    scheduled = Trainer(copy.deepcopy(base), a.backend, a.device, a.batch, scheduled=True)
    eager = Trainer(copy.deepcopy(base), None, a.device, a.batch, scheduled=True)
    t0 = time.perf_counter()
    constant.step()
    scheduled.step()
    compile_s = time.perf_counter() - t0
    t = time_interleaved(
        {"constant": constant.step, "scheduled": scheduled.step, "eager": eager.step},
        rounds=a.rounds,
        number=a.number,
        warmup=3,
        device=a.device,
    )
    section = f"step time ({a.blocks}x{a.width}, batch {a.batch})"
    report.add(section, "compiled, constant rate", t.median("constant") * 1e3, unit="ms")
    report.add(section, "compiled, rate changing every step", t.median("scheduled") * 1e3, unit="ms")
    report.add(section, "eager, rate changing every step", t.median("eager") * 1e3, unit="ms")
    ratio = t.ratio("scheduled", "constant")
    report.add(section, "changing / constant (compiled)", ratio, unit="x", target="<= 1.02", summary=True)
    report.add(section, "eager / compiled constant", t.ratio("eager", "constant"), unit="x")
    report.add(section, "first calls (compile; inductor cache may be warm)", compile_s, unit="s")
    recompiles = int(counters["stats"]["unique_graphs"]) - 2  # one graph per compiled model
    report.add(section, "recompiles during timing", str(recompiles), target="0")

    ref = masks(None, a.device)
    for fallback in (True, False):
        torch._inductor.config.fallback_random = fallback
        got = masks(a.backend, a.device)
        same = all(torch.equal(x, y) for x, y in zip(ref, got))
        report.add(
            "draws (6 steps, every module's mask)",
            f"compiled == eager, fallback_random={fallback}",
            "bitwise equal" if same else "differ",
            target="bitwise equal",
            note="masks equal" if same else "other masks",
            summary=not fallback,
        )
    torch._inductor.config.fallback_random = False
    report.note(
        "Graph counts use dynamo's counters with the eager backend over a 30-step warm-up. Step times are"
        " medians of interleaved rounds; the ratio is paired per round (geometric mean, 95 % interval). The"
        " eager row is what a model whose rates recompile runs once dynamo hits its recompile limit."
    )
    report.save()


if __name__ == "__main__":
    main()
