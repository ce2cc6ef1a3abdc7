"""The one timing harness of the benchmark scripts, and the result files the documentation includes.

Discipline every timing follows:

* **paired, interleaved rounds**: ``time_interleaved`` (and ``interleaved_samples`` for samples a
  script measures itself, e.g. a step time inside a ``fit``) runs the variants in turn, round after round,
  reversing the order every other round (a, b, c, c, b, a, ...), so slow drifts of a shared machine and
  position effects hit every variant alike;
* **a 95 % interval on every ratio**: ``Timings.ratio`` is the geometric mean of the per-round ratios
  with a Student-t interval on their logarithms (a ``Ratio``);
* **a quiet machine**: a ``LoadGuard`` reads the 1-minute load average before and after each
  measurement, waits while other work keeps it above half the cores, repeats a measurement that ended on a
  busy machine and refuses (``MachineBusyError``) when the machine stays busy. Its own contribution
  to the load average is estimated from its CPU time and subtracted, so a benchmark that keeps both cores
  busy is not refused for its own work. ``LIGHTNING_REG_BENCH_ALLOW_LOAD=1`` measures anyway (smoke runs);
  such results say so under their table;
* **a target and a verdict on every claim**: ``Report.add`` takes a ``target`` (``"<= 1.02"``,
  ``">= 2"``, ``"0"``, ``"bitwise equal"``) and records ``pass`` / ``fail``, or ``inconclusive`` when the
  95 % interval contains the target;
* **result files that say where they come from**: ``Report.save`` writes

  - ``benchmarks/results/<name>.json``: every number, the command, the commit, the date, the machine, the
    load before and after, every measurement's load, the versions;
  - ``docs/benchmarks/results/<name>.md``: the full tables (the benchmarks page includes them);
  - ``docs/benchmarks/results/summary/<group>.md``: the rows a script marks ``summary=...``, 3-5 per method
    card (the cards include these).

``python benchmarks/harness.py render`` re-renders the Markdown files from the JSON files (no measuring),
e.g. after a change of the layout. So the numbers on the documentation site are always the ones a script
wrote, never pasted.

Example (a tiny run; real scripts use more rounds):

    report = Report("demo", "python benchmarks/demo.py")
    t = time_interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, rounds=5)
    report.add("sum", "b / a", t.ratio("b", "a"), unit="x", target="<= 3", summary=True)
    report.save()
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(ROOT))

from example_projects.stats import t_quantile_975  # noqa: E402  (one t table for the repository)

RESULTS_JSON = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "docs" / "benchmarks" / "results"
SUMMARY_DIR = "summary"
#: Version of the result-file layout (1: medians of paired ratios, no interval, no commit or load record).
SCHEMA = 2
#: Set to 1 to measure on a busy machine anyway (results say so); for smoke runs, never for publishing.
ALLOW_LOAD_ENV = "LIGHTNING_REG_BENCH_ALLOW_LOAD"
TIME_UNITS = ("ns", "us", "µs", "ms", "s", "s/fit", "ms/epoch")
#: Every measurement of this process: variants, rounds, load before and after (written into the JSON).
MEASUREMENTS: list[dict[str, Any]] = []


class MachineBusyError(RuntimeError):
    """The machine stayed busier than the limit: timings taken now would measure the other work."""


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Ratio:
    """A paired ratio: geometric mean of per-round ratios with its 95 % Student-t interval.

    ``float(r)`` and ``format(r, ".3f")`` give the estimate, so a ``Ratio`` reads like a number.
    """

    value: float
    low: float
    high: float
    n: int

    @classmethod
    def from_ratios(cls, ratios: Iterable[float]) -> Ratio:
        """Interval from per-round ratios: t-interval on their logarithms, transformed back.

        One round gives an infinite interval (nothing is known about the spread).
        """
        logs = [math.log(r) for r in ratios]
        if not logs:
            raise ValueError("a ratio needs at least one round; got none")
        mean = statistics.fmean(logs)
        if len(logs) < 2:
            return cls(math.exp(mean), 0.0, math.inf, 1)
        half = t_quantile_975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return cls(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))

    def __float__(self) -> float:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class Timings:
    """Per-round samples (seconds) of every variant, and the load record of the measurement."""

    samples: dict[str, list[float]]
    measurement: dict[str, Any] | None = None

    def median(self, name: str) -> float:
        """Median seconds of one call of ``name``."""
        return statistics.median(self.samples[name])

    def ratio(self, num: str, den: str) -> Ratio:
        """``num / den`` paired by round: geometric mean of the per-round ratios with a 95 % interval."""
        return Ratio.from_ratios(a / b for a, b in zip(self.samples[num], self.samples[den]))

    def spread(self, name: str) -> float:
        """Interquartile range over the median (relative noise of ``name``)."""
        xs = sorted(self.samples[name])
        if len(xs) < 4:
            return float("nan")
        q1, _, q3 = statistics.quantiles(xs, n=4)
        return (q3 - q1) / statistics.median(xs)


_TARGET = re.compile(r"^\s*(<=|>=|==|<|>|=)?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])")


def verdict(target: str, value: Any, low: float | None = None, high: float | None = None) -> str:
    """``"pass"``, ``"fail"`` or ``"inconclusive"`` for ``value`` (with its interval) against ``target``.

    A numeric target is a bound (``"<= 1.02"``, ``">= 2"``, ``"< 50"``) or, without an operator, a value
    the measurement must equal (``"0"``); words after the number are a comment (``"<= 1.0 (about)"``).
    With an interval, ``pass`` needs the whole interval on the right side of the bound, ``fail`` the whole
    interval on the wrong side; an interval that contains the bound is ``inconclusive``. Any other target
    is a text the value must equal (``"bitwise equal"``). No target: ``""``.
    """
    if not target:
        return ""
    m = _TARGET.match(target)
    if m is None:
        return "pass" if str(value).strip() == target.strip() else "fail"
    op, bound = m.group(1) or "==", float(m.group(2))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "fail"
    lo, hi = (low, high) if low is not None and high is not None else (x, x)
    if op in ("==", "="):
        if lo == hi == bound:
            return "pass"
        return "inconclusive" if lo <= bound <= hi else "fail"
    good = {"<=": lambda v: v <= bound, "<": lambda v: v < bound, ">=": lambda v: v >= bound,
            ">": lambda v: v > bound}[op]  # fmt: skip
    worst, best = (hi, lo) if op in ("<=", "<") else (lo, hi)
    if good(worst):
        return "pass"
    if not good(best):
        return "fail"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------- machine load


def load_average() -> float:
    """The 1-minute load average (``nan`` where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def own_cpu_seconds() -> float:
    """CPU seconds this process (all threads) and its finished children have used."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class LoadGuard:
    """Keeps timings off a busy machine: wait, repeat, or refuse.

    The limit is on the load of *other* work: the 1-minute load average minus this process's own share of
    it, modelled as Linux computes the average (an exponential average with a 60 s time constant of the
    number of busy threads; the process's busy threads are its CPU time over wall time while measuring).

    Args:
        max_load: the limit; ``None``: half the CPU cores.
        wait_s: how long to wait for a quiet machine before refusing.
        poll_s: interval between two looks at the load while waiting.
        attempts: measurements tried before refusing when each one ends on a busy machine.
        enforce: ``False`` measures anyway and records the load (``LIGHTNING_REG_BENCH_ALLOW_LOAD=1``).
        loadavg, cpu_time, clock, sleep: where the guard reads the load, its CPU time and the time, and
            how it waits (tests replace them).
    """

    max_load: float | None = None
    wait_s: float = 600.0
    poll_s: float = 20.0
    attempts: int = 3
    enforce: bool = field(default_factory=lambda: os.environ.get(ALLOW_LOAD_ENV) != "1")
    loadavg: Callable[[], float] = load_average
    cpu_time: Callable[[], float] = own_cpu_seconds
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _share: float = 0.0  # this process's estimated share of the load average at time _at
    _at: float | None = None

    @property
    def limit(self) -> float:
        """The largest load of other work a measurement accepts."""
        return self.max_load if self.max_load is not None else (os.cpu_count() or 1) / 2

    def own_share(self) -> float:
        """This process's estimated share of the load average now (decayed since its last measurement)."""
        if self._at is None:
            return 0.0
        return self._share * math.exp(-(self.clock() - self._at) / 60.0)

    def others(self, load: float) -> float:
        """The load of other work, given the load average ``load``."""
        return max(0.0, load - self.own_share())

    def wait_until_quiet(self) -> float:
        """Wait until other work loads the machine at most ``limit``; return the load average then.

        Raises:
            MachineBusyError: still busy after ``wait_s`` (only when ``enforce``).
        """
        start = self.clock()
        while True:
            load = self.loadavg()
            if not self.enforce or not self.others(load) > self.limit:
                return load
            waited = self.clock() - start
            if waited >= self.wait_s:
                raise MachineBusyError(
                    f"load average {load:.2f} (other work about {self.others(load):.2f}) is above the limit "
                    f"{self.limit:g} (half the {os.cpu_count()} cores) after waiting {waited:.0f} s: timings "
                    f"now would measure the other work. Rerun on a quiet machine, or set {ALLOW_LOAD_ENV}=1 "
                    "for a smoke run (the result files then say it was busy)."
                )
            self.sleep(min(self.poll_s, self.wait_s - waited))

    def _record_own_work(self, cpu_s: float, wall_s: float) -> float:
        busy = cpu_s / wall_s if wall_s > 0 else 0.0
        decay = math.exp(-wall_s / 60.0)
        self._share = self.own_share() * decay + busy * (1.0 - decay)
        self._at = self.clock()
        return busy

    def run(self, measure: Callable[[], Any], label: str = "") -> tuple[Any, dict[str, Any]]:
        """Run ``measure`` on a quiet machine; repeat it when the machine was busy by its end.

        Returns:
            ``measure()``'s result and the load record (also appended to ``MEASUREMENTS``).

        Raises:
            MachineBusyError: busy before (after ``wait_s``) or at the end of every attempt.
        """
        for attempt in range(1, self.attempts + 1):
            before = self.wait_until_quiet()
            cpu0, t0 = self.cpu_time(), self.clock()
            result = measure()
            wall = self.clock() - t0
            busy_threads = self._record_own_work(self.cpu_time() - cpu0, wall)
            after = self.loadavg()
            record = {
                "label": label,
                "load_before": round(before, 2),
                "load_after": round(after, 2),
                "own_busy_threads": round(busy_threads, 2),
                "others_after": round(self.others(after), 2),
                "limit": self.limit,
                "seconds": round(wall, 3),
                "attempt": attempt,
                "busy": self.others(after) > self.limit,
            }
            if not record["busy"] or not self.enforce:
                MEASUREMENTS.append(record)
                return result, record
            print(
                f"  machine busy at the end of {label or 'a measurement'} (load {after:.2f}, other work "
                f"about {record['others_after']:.2f} > {self.limit:g}); attempt {attempt} of {self.attempts}",
                flush=True,
            )
        raise MachineBusyError(
            f"every one of {self.attempts} attempts of {label or 'the measurement'} ended on a busy machine "
            f"(last load {after:.2f}, limit {self.limit:g} for other work); rerun on a quiet machine."
        )


_GUARD: LoadGuard | None = None


def default_guard() -> LoadGuard:
    """The process-wide guard (one, so that it remembers this process's own share of the load)."""
    global _GUARD
    if _GUARD is None:
        _GUARD = LoadGuard()
    return _GUARD


# ---------------------------------------------------------------------------------------------- timing


def synchronize(device: str | None) -> None:
    """Wait for queued GPU work (no-op on CPU), so a timer measures the work and not its launch."""
    if device and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The variants' order in round ``round_index``: as given in even rounds, reversed in odd ones."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def interleaved_samples(
    variants: Mapping[str, Callable[[], float]],
    rounds: int,
    warmup: int = 0,
    guard: LoadGuard | None = None,
) -> Timings:
    """Collect one sample per variant and round from functions that measure themselves, interleaved.

    For timings a script takes inside a larger run (e.g. the median step time of one ``fit``): each
    function returns its sample in seconds. The order alternates between rounds (``round_order``), the
    whole collection runs under the load guard.
    """
    guard = guard or default_guard()

    def measure() -> dict[str, list[float]]:
        for fn in variants.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(rounds):
            for name in round_order(list(variants), i):
                samples[name].append(float(variants[name]()))
        return samples

    samples, record = guard.run(measure, label=" vs ".join(variants))
    return Timings(samples, record)


def time_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int = 20,
    number: int = 1,
    warmup: int = 2,
    device: str | None = None,
    setup: Callable[[], Any] | None = None,
    guard: LoadGuard | None = None,
) -> Timings:
    """Time every variant ``rounds`` times, interleaved, after ``warmup`` untimed calls each.

    Args:
        variants: name -> function to time.
        rounds: rounds (samples per variant).
        number: calls per sample (the sample is their mean).
        warmup: untimed calls of each variant first.
        device: ``"cuda..."`` to synchronise around every sample.
        setup: called (untimed) before every sample, e.g. to refill gradients.
        guard: the load guard (default: the process-wide one).

    Returns:
        ``Timings`` with the load record of the measurement.
    """

    def timed(fn: Callable[[], Any]) -> Callable[[], float]:
        def sample() -> float:
            if setup is not None:
                setup()
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            synchronize(device)
            return (time.perf_counter() - t0) / number

        return sample

    def warm(fn: Callable[[], Any]) -> None:
        if setup is not None:
            setup()
        fn()

    for fn in variants.values():
        for _ in range(warmup):
            warm(fn)
    return interleaved_samples({name: timed(fn) for name, fn in variants.items()}, rounds, guard=guard)


# ---------------------------------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """Commit, date, machine and versions that every result file records."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (uncommitted changes)"
    env: dict[str, Any] = {
        "commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
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
    return env


# ---------------------------------------------------------------------------------------------- reports


@dataclass
class Row:
    """One reported number.

    A row is a cell of its ``section``'s table: ``metric`` names its row and ``column`` its column (empty:
    the table's single value column). ``low`` / ``high`` hold a 95 % interval, ``result`` the verdict
    against ``target``, ``summary`` the method-card summary the row belongs to (empty: none).
    """

    section: str
    metric: str
    value: float | str
    unit: str = ""
    target: str = ""
    note: str = ""
    column: str = ""
    low: float | None = None
    high: float | None = None
    result: str = ""
    summary: str = ""


@dataclass
class Report:
    """Rows of one benchmark script, printed as they come and saved as JSON and Markdown.

    Args:
        name: file stem of the result files (e.g. ``"gradients"``).
        command: the command that reproduces the numbers.
        title: the line above the tables.
    """

    name: str
    command: str
    title: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_at_start: float = field(default_factory=load_average)

    def add(
        self,
        section: str,
        metric: str,
        value: float | str | Ratio,
        unit: str = "",
        target: str = "",
        note: str = "",
        *,
        column: str = "",
        summary: bool | str = False,
        passed: bool | None = None,
    ) -> Row:
        """Record (and print) one number; a ``Ratio`` brings its interval, a ``target`` its verdict.

        Args:
            section: the table the row belongs to.
            metric: the row's label.
            value: a number, a ``Ratio`` or a text.
            unit: shown after the value (``"ms"``, ``"x"``, ...).
            target: what the value must meet (see ``verdict``).
            note: a remark shown in the table's note column.
            column: the column of a wide table (empty: the table's single value column).
            summary: ``True`` or a group name: the row also goes into the method card's summary
                ``summary/<group>.md`` (``True``: the report's name).
            passed: the verdict when the script decides it itself (a target that is not a bound).
        """
        low = high = None
        if isinstance(value, Ratio):
            value, low, high = value.value, value.low, value.high
        if passed is not None:
            result = "pass" if passed else "fail"
        else:
            result = verdict(target, value, low, high)
        group = (self.name if summary is True else summary) or ""
        row = Row(section, metric, value, unit, target, note, column, low, high, result, group)
        self.rows.append(row)
        where = f"{section}{' / ' + column if column else ''}"
        extra = f"   target {target}: {result}" if target else ""
        print(f"  [{where}] {metric}: {_value(row)}{extra}", flush=True)
        return row

    def note(self, text: str) -> None:
        """Add a sentence printed under the table (e.g. what a ratio compares)."""
        self.notes.append(text)

    def payload(self) -> dict[str, Any]:
        """Everything the JSON file holds."""
        return {
            "schema": SCHEMA,
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "argv": sys.argv,
            "environment": environment(),
            "load": {
                "before": round(self.load_at_start, 2),
                "after": round(load_average(), 2),
                "limit": default_guard().limit,
                "enforced": default_guard().enforce,
            },
            "measurements": list(MEASUREMENTS),
            "rows": [asdict(r) for r in self.rows],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        """The rows as Markdown tables, with the command and the environment."""
        return render_markdown(self.payload())

    def save(self, directory_json: Path = RESULTS_JSON, directory_md: Path = RESULTS_MD) -> None:
        """Write ``<name>.json``, ``<name>.md`` and the summaries ``summary/<group>.md``."""
        payload = self.payload()
        directory_json.mkdir(parents=True, exist_ok=True)
        (directory_json / f"{self.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        written = write_markdown(payload, directory_md)
        print(f"results: {directory_json / (self.name + '.json')}, " + ", ".join(map(str, written)))


# ---------------------------------------------------------------------------------------------- Markdown


def _num(x: float) -> str:
    if x != x:  # NaN
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.3f}"
    return f"{x:.3g}"


def _fmt(value: float | str) -> str:
    return value if isinstance(value, str) else _num(value)


def _value(row: Row | Mapping[str, Any]) -> str:
    r = row if isinstance(row, Mapping) else asdict(row)
    unit = r.get("unit") or ""
    return f"{_fmt(r['value'])}{' ' + unit if unit else ''}"


def _interval(r: Mapping[str, Any]) -> str:
    if r.get("low") is None or r.get("high") is None:
        return ""
    return f"[{_num(r['low'])}, {_num(r['high'])}]"


def _result(r: Mapping[str, Any]) -> str:
    return r.get("result") or verdict(r.get("target", ""), r["value"], r.get("low"), r.get("high"))


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell.

    ``|`` would end the cell; ``{...}`` at the end of a cell is read as an attribute list by ``attr_list``
    (the cell then shows nothing), so braces outside code spans become HTML entities; ``_`` and ``*``
    outside code spans are escaped (``__setattr__`` would turn bold).
    """
    parts = str(text).replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("{", "&#123;").replace("}", "&#125;")
        # generated text is not Markdown: `__setattr__` must not turn bold, nor `*` emphasise
        parts[i] = parts[i].replace("_", "\\_").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    keep = [j for j in range(len(header)) if j == 0 or any(row[j] for row in body)]  # no empty columns
    lines = ["| " + " | ".join(cell(header[j]) for j in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(cell(row[j]) for j in keep) + " |" for row in body]
    return lines


def _section_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(r.get("column", "") for r in rows))
    if columns == [""]:  # a plain table: one row per measurement
        header = ["measurement", "value", "95 % interval", "target", "result", "note"]
        body = [
            [r["metric"], _value(r), _interval(r), r.get("target", ""), _result(r), r.get("note", "")]
            for r in rows
        ]
        return _table(header, body)
    # a wide table: one row per metric, one column per `column`; target and verdict per cell
    labels = list(dict.fromkeys(r["metric"] for r in rows))
    by_cell = {(r["metric"], r.get("column", "")): r for r in rows}
    header = ["", "target", *columns, "note"]
    body = []
    for label in labels:
        cells = [by_cell.get((label, c)) for c in columns]
        present = [c for c in cells if c is not None]
        targets = list(dict.fromkeys(c.get("target", "") for c in present if c.get("target")))
        notes = list(dict.fromkeys(c.get("note", "") for c in present if c.get("note")))
        per_cell = len(targets) > 1  # cells of one row judged against different targets: say which
        shown = []
        for c in cells:
            if c is None:
                shown.append("—")
                continue
            text = " ".join(x for x in (_value(c), _interval(c)) if x)
            if per_cell and c.get("target"):
                text += f" (target {c['target']}: {_result(c)})"
            elif _result(c):
                text += f" ({_result(c)})"
            shown.append(text)
        body.append([label, "" if per_cell else "; ".join(targets), *shown, "; ".join(notes)])
    return _table(header, body)


def _tables(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    sections = list(dict.fromkeys(r["section"] for r in rows))
    lines: list[str] = []
    for section in sections:
        if section and (len(sections) > 1 or lines == []):
            lines += [f"*{cell(section)}*", ""]
        lines += _section_table([r for r in rows if r["section"] == section]) + [""]
    return lines


def _provenance(payload: Mapping[str, Any]) -> str:
    env = payload.get("environment", {})
    load = payload.get("load")
    if payload.get("schema", 1) >= 2:
        where = f"commit {env.get('commit') or 'unknown'}, {env.get('date', 'date unknown')}"
    else:
        where = "commit and date not recorded (an older harness)"
    machine = ", ".join(
        str(x)
        for x in (
            env.get("machine"),
            env.get("cpu"),
            f"{env['cpus']} CPUs" if env.get("cpus") else None,
            env.get("cuda"),
        )
        if x
    )
    if load:
        loads = f"load average (1 min) {load['before']} before, {load['after']} after"
    else:
        loads = f"load average (1 min) {env.get('load_average', 'not recorded')} at the end"
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("python", "torch", "lightning", "threads") if env.get(k) is not None
    )
    return f"Measured at {where} on {machine}; {loads}; {versions}."


def render_markdown(payload: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Markdown of a result file: the title, one table per section, the notes, where it was measured.

    With ``rows`` (a summary), only those rows and a one-line provenance, without title and notes.
    """
    summary = rows is not None
    rows = list(payload["rows"] if rows is None else rows)
    lines: list[str] = []
    if not summary and payload.get("title"):
        lines += [f"**{cell(payload['title'])}**", ""]
    lines += _tables(rows)
    if not summary:
        notes = list(payload.get("notes", []))
        if payload.get("schema", 1) < 2 and any(r.get("unit") == "x" for r in rows):
            notes.append(
                "Ratios in this file are medians of per-round paired ratios without an interval (measured "
                "before the harness recorded intervals); the verdicts compare the point value only."
            )
        busy = [m for m in payload.get("measurements", []) if m.get("busy")]
        if busy:
            notes.append(
                f"{len(busy)} measurement(s) ended with other work above the load limit "
                f"({ALLOW_LOAD_ENV}=1): not valid as published numbers."
            )
        lines += [*notes, ""] if notes else []
    lines.append(_provenance(payload) + f" Reproduce: `{payload['command']}`.")
    return "\n".join(lines) + "\n"


def write_markdown(payload: Mapping[str, Any], directory_md: Path = RESULTS_MD) -> list[Path]:
    """Write ``<name>.md`` and every ``summary/<group>.md`` of a result; return the paths."""
    directory_md.mkdir(parents=True, exist_ok=True)
    full = directory_md / f"{payload['name']}.md"
    full.write_text(render_markdown(payload))
    written = [full]
    groups = list(dict.fromkeys(r["summary"] for r in payload["rows"] if r.get("summary")))
    for group in groups:
        path = directory_md / SUMMARY_DIR / f"{group}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_markdown(payload, [r for r in payload["rows"] if r.get("summary") == group]))
        written.append(path)
    return written


def render_all(directory_json: Path = RESULTS_JSON, directory_md: Path = RESULTS_MD) -> list[Path]:
    """Re-render the Markdown of every result file in ``directory_json`` (no measuring)."""
    written: list[Path] = []
    for path in sorted(directory_json.glob("*.json")):
        payload = json.loads(path.read_text())
        if "rows" in payload:  # other JSON files there (e.g. a selection's choice) are not reports
            written += write_markdown(payload, directory_md)
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["render"]:
        raise SystemExit("usage: python benchmarks/harness.py render  (Markdown from the JSON results)")
    for p in render_all():
        print(p.relative_to(ROOT))
