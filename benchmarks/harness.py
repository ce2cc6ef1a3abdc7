"""The one timing harness of the benchmark scripts, and the result files the documentation includes.

Every script in ``benchmarks/`` times with :func:`time_interleaved` (variants interleaved round by round,
so slow drifts of a shared machine hit all variants alike; medians and per-round paired ratios), and
finishes with :meth:`Report.save`, which writes

* ``benchmarks/results/<name>.json``: every number, the command and the environment;
* ``docs/benchmarks/results/<name>.md``: the same as a Markdown table, included by the docs page.

So the numbers on the documentation site are always the ones the script printed last, never pasted.

Example (a tiny run; real scripts use more rounds)::

    report = Report("demo", "python benchmarks/demo.py")
    t = time_interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, rounds=5)
    report.add("sum", "b / a", t.ratio("b", "a"), unit="x", target="<= 3")
    report.save()
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "docs" / "benchmarks" / "results"


def synchronize(device: str | None) -> None:
    """Wait for queued GPU work (no-op on CPU), so a timer measures the work and not its launch."""
    if device and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class Timings:
    """Per-round seconds of every variant; all statistics are medians."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        """Median seconds of one call of ``name``."""
        return statistics.median(self.samples[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over rounds of ``num / den`` timed in the same round (a paired ratio)."""
        return statistics.median(a / b for a, b in zip(self.samples[num], self.samples[den]))

    def spread(self, name: str) -> float:
        """Interquartile range over the median (relative noise of ``name``)."""
        xs = sorted(self.samples[name])
        if len(xs) < 4:
            return float("nan")
        q1, _, q3 = statistics.quantiles(xs, n=4)
        return (q3 - q1) / statistics.median(xs)


def time_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int = 20,
    number: int = 1,
    warmup: int = 2,
    device: str | None = None,
    setup: Callable[[], Any] | None = None,
) -> Timings:
    """Time every variant ``rounds`` times, interleaved (a, b, c, a, b, c, ...), after ``warmup`` calls each.

    Args:
        variants: name -> function to time.
        rounds: rounds (samples per variant).
        number: calls per sample (the sample is their mean).
        warmup: untimed calls of each variant first.
        device: ``"cuda..."`` to synchronise around every sample.
        setup: called (untimed) before every sample, e.g. to refill gradients.

    Returns:
        :class:`Timings`.
    """
    for fn in variants.values():
        for _ in range(warmup):
            if setup is not None:
                setup()
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            if setup is not None:
                setup()
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - t0) / number)
    return Timings(samples)


def environment() -> dict[str, Any]:
    """Versions and machine facts that every result file records."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        env["torch"] = torch.__version__.split("+")[0]
        env["threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    try:
        import lightning

        env["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        env["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    return env


@dataclass
class Row:
    """One reported number."""

    section: str
    metric: str
    value: float | str
    unit: str = ""
    target: str = ""
    note: str = ""


@dataclass
class Report:
    """Rows of one benchmark script, printed as they come and saved as JSON and Markdown.

    Args:
        name: file stem of the result files (e.g. ``"gradients"``).
        command: the command that reproduces the numbers.
        title: heading of the Markdown table.
    """

    name: str
    command: str
    title: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        section: str,
        metric: str,
        value: float | str,
        unit: str = "",
        target: str = "",
        note: str = "",
    ) -> None:
        """Record (and print) one number."""
        row = Row(section, metric, value, unit, target, note)
        self.rows.append(row)
        shown = _fmt(value)
        extra = f"   target {target}" if target else ""
        print(f"  [{section}] {metric}: {shown}{(' ' + unit) if unit else ''}{extra}", flush=True)

    def note(self, text: str) -> None:
        """Add a sentence printed under the table (e.g. what a ratio compares)."""
        self.notes.append(text)

    def markdown(self) -> str:
        """The rows as a Markdown table, with the command and the environment."""
        env = environment()
        lines = [f"**{self.title or self.name}**", ""]
        lines += ["| section | metric | value | target | note |", "|---|---|---|---|---|"]
        for r in self.rows:
            value = f"{_fmt(r.value)}{(' ' + r.unit) if r.unit else ''}"
            lines.append(f"| {r.section} | {r.metric} | {value} | {r.target} | {r.note} |")
        lines += [""] + [f"{n}" for n in self.notes] + ([""] if self.notes else [])
        described = ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
        lines.append(f"Reproduce: `{self.command}` ({described}).")
        return "\n".join(lines) + "\n"

    def save(self, directory_json: Path = RESULTS_JSON, directory_md: Path = RESULTS_MD) -> None:
        """Write ``<name>.json`` and ``<name>.md``."""
        directory_json.mkdir(parents=True, exist_ok=True)
        directory_md.mkdir(parents=True, exist_ok=True)
        payload = {
            "name": self.name,
            "command": self.command,
            "argv": sys.argv,
            "environment": environment(),
            "rows": [asdict(r) for r in self.rows],
            "notes": self.notes,
        }
        (directory_json / f"{self.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (directory_md / f"{self.name}.md").write_text(self.markdown())
        print(f"results: {directory_json / (self.name + '.json')}, {directory_md / (self.name + '.md')}")


def _fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.3f}"
    return f"{value:.3g}"
