"""The benchmark harness's statistics, verdicts, load guard and result files, with fake timings and loads.

Nothing here times anything: samples, load averages, CPU times and clocks are made up, so the tests run on
a busy machine and check exactly what the harness computes from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from benchmarks import harness
from benchmarks.harness import (
    LoadGuard,
    MachineBusyError,
    Ratio,
    Report,
    Timings,
    interleaved_samples,
    render_markdown,
    round_order,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- ratios and their intervals


def test_ratio_is_the_geometric_mean_with_a_t_interval_on_log_ratios():
    ratios = [1.02, 0.98, 1.05, 1.01, 0.99, 1.03, 1.00, 1.04]
    r = Ratio.from_ratios(ratios)
    logs = [math.log(x) for x in ratios]
    lo, hi = stats.t.interval(0.95, len(logs) - 1, loc=sum(logs) / len(logs), scale=stats.sem(logs))
    assert r.value == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert r.low == pytest.approx(math.exp(lo), rel=1e-4) and r.high == pytest.approx(math.exp(hi), rel=1e-4)
    assert r.n == 8 and r.low < r.value < r.high
    assert f"{r:.2f}" == f"{r.value:.2f}" and float(r) == r.value


def test_one_round_gives_an_unbounded_interval_and_no_round_is_an_error():
    r = Ratio.from_ratios([1.5])
    assert r.value == pytest.approx(1.5) and r.low == 0.0 and math.isinf(r.high)
    assert verdict("<= 2", r.value, r.low, r.high) == "inconclusive"
    with pytest.raises(ValueError, match="at least one round"):
        Ratio.from_ratios([])


def test_timings_ratio_pairs_samples_by_round():
    # every round is twice as slow for "b", while the machine's speed drifts by 10x between rounds: a
    # paired ratio sees exactly 2 with no spread; a ratio of medians would not know it is paired
    a = [1.0, 10.0, 3.0, 0.5, 7.0]
    t = Timings({"a": a, "b": [2 * x for x in a]})
    r = t.ratio("b", "a")
    assert r.value == pytest.approx(2.0) and r.low == pytest.approx(2.0) and r.high == pytest.approx(2.0)
    shuffled = Timings({"a": a, "b": [2 * x for x in reversed(a)]})
    wide = shuffled.ratio("b", "a")
    assert wide.high / wide.low > 10  # unpaired samples: the interval says so
    assert t.median("a") == 3.0


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("target", "value", "low", "high", "expected"),
    [
        ("<= 1.02", 0.97, 0.95, 0.99, "pass"),
        ("<= 1.02", 0.99, 0.96, 1.03, "inconclusive"),  # the interval contains the bound
        ("<= 1.02", 1.08, 1.05, 1.10, "fail"),
        ("<= 1.02", 1.01, None, None, "pass"),  # no interval: the value alone
        (">= 2", 4.6, 4.1, 5.0, "pass"),
        (">= 2", 1.2, 1.0, 1.4, "fail"),
        ("< 1", 0.63, None, None, "pass"),
        ("<= 1.0 (about)", 0.98, None, None, "pass"),  # words after the number are a comment
        ("0 (must not grow)", 0.0, None, None, "pass"),
        ("0", 4096.0, None, None, "fail"),
        ("1", "1", None, None, "pass"),  # a count reported as text
        ("1", "8", None, None, "fail"),
        ("bitwise equal", "bitwise equal", None, None, "pass"),
        ("bitwise equal", "differ", None, None, "fail"),
        ("", 3.0, None, None, ""),
    ],
)
def test_verdict(target, value, low, high, expected):
    assert verdict(target, value, low, high) == expected


# ---------------------------------------------------------------- interleaving


def test_round_order_alternates():
    assert [round_order(["a", "b", "c"], i) for i in range(3)] == [
        ["a", "b", "c"],
        ["c", "b", "a"],
        ["a", "b", "c"],
    ]


class FakeMachine:
    """A clock, a load average and this process's CPU time, all under the test's control."""

    def __init__(self, loads: list[float], cpus_busy: float = 0.0) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.loads = list(loads)
        self.cpus_busy = cpus_busy  # how many cores this process keeps busy while measuring
        self.sleeps: list[float] = []

    def loadavg(self) -> float:
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.cpu += seconds * self.cpus_busy

    def guard(self, **kwargs) -> LoadGuard:
        kwargs.setdefault("max_load", 1.0)
        kwargs.setdefault("enforce", True)
        return LoadGuard(
            loadavg=self.loadavg,
            cpu_time=lambda: self.cpu,
            clock=lambda: self.now,
            sleep=self.sleep,
            **kwargs,
        )


def test_interleaved_samples_alternate_the_order_and_record_the_load():
    machine = FakeMachine([0.2])
    calls: list[str] = []

    def variant(name: str):
        def sample() -> float:
            calls.append(name)
            machine.work(1.0)
            return {"plain": 1.0, "callback": 1.1}[name]

        return sample

    before = len(harness.MEASUREMENTS)
    t = interleaved_samples(
        {"plain": variant("plain"), "callback": variant("callback")}, rounds=4, guard=machine.guard()
    )
    assert calls == ["plain", "callback", "callback", "plain"] * 2
    assert t.ratio("callback", "plain").value == pytest.approx(1.1)
    assert t.measurement["load_before"] == 0.2 and t.measurement["busy"] is False
    assert harness.MEASUREMENTS[before:] == [t.measurement]


# ---------------------------------------------------------------- the load guard


def test_guard_waits_for_a_quiet_machine_then_measures():
    machine = FakeMachine([3.0, 2.5, 0.4], cpus_busy=1.0)
    guard = machine.guard(poll_s=20, wait_s=600)
    result, record = guard.run(lambda: machine.work(5.0) or "done")
    assert result == "done" and machine.sleeps == [20, 20]
    assert record["load_before"] == 0.4 and record["attempt"] == 1


def test_guard_refuses_when_the_machine_stays_busy():
    machine = FakeMachine([2.0])
    guard = machine.guard(poll_s=30, wait_s=90)
    busy = r"load average 2.00 .* above the limit 1 .* after waiting 90 s"
    with pytest.raises(MachineBusyError, match=busy):
        guard.run(lambda: pytest.fail("measured on a busy machine"))
    assert machine.sleeps == [30, 30, 30]


def test_guard_repeats_a_measurement_that_ended_on_a_busy_machine():
    # quiet before, busy at the end of the first attempt (another job started), quiet for the second
    machine = FakeMachine([0.1, 2.5, 0.2, 0.3])
    attempts: list[int] = []
    guard = machine.guard()
    result, record = guard.run(lambda: attempts.append(1) or len(attempts))
    assert attempts == [1, 1] and result == 2 and record["attempt"] == 2 and not record["busy"]


def test_guard_gives_up_after_its_attempts():
    machine = FakeMachine([0.1, 2.5])  # busy at the end of every attempt, quiet enough before (see below)
    guard = machine.guard(attempts=2, wait_s=0)
    machine.loads = [0.1, 2.5, 0.1, 2.5]
    with pytest.raises(MachineBusyError, match="every one of 2 attempts"):
        guard.run(lambda: None)


def test_guard_does_not_count_its_own_work_as_other_load():
    # a 60 s measurement keeping both cores busy lifts the 1-minute average to about 2 * (1 - 1/e) = 1.26:
    # that is this process, not other work, and the measurement is accepted
    machine = FakeMachine([0.1, 1.3], cpus_busy=2.0)
    guard = machine.guard(max_load=1.0)
    _, record = guard.run(lambda: machine.work(60.0))
    assert record["own_busy_threads"] == pytest.approx(2.0)
    assert record["others_after"] == pytest.approx(1.3 - 2.0 * (1 - math.exp(-1)), abs=0.01)
    assert not record["busy"]
    # its share decays with the load average's time constant: a minute later, half of it is gone... about
    machine.now += 60.0
    assert guard.own_share() == pytest.approx(2.0 * (1 - math.exp(-1)) * math.exp(-1), rel=1e-6)


def test_guard_not_enforced_measures_anyway_and_says_so():
    machine = FakeMachine([3.0])
    guard = machine.guard(enforce=False)
    _, record = guard.run(lambda: machine.work(1.0))
    assert record["busy"] and machine.sleeps == []
    payload = {"name": "x", "command": "c", "rows": [], "measurements": [record], "schema": 2}
    assert "not valid as published numbers" in render_markdown(payload)


def test_default_limit_is_half_the_cores(monkeypatch):
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 16)
    assert LoadGuard().limit == 8
    monkeypatch.setenv(harness.ALLOW_LOAD_ENV, "1")
    assert LoadGuard().enforce is False


# ---------------------------------------------------------------- reports and result files


def test_report_rows_carry_interval_verdict_and_summary(tmp_path, capsys):
    report = Report("demo", "python benchmarks/demo.py", title="Demo")
    ratio = Ratio.from_ratios([1.01, 0.99, 1.00, 1.02])
    row = report.add("step", "with callback / plain", ratio, "x", target="<= 1.05", summary=True)
    assert (row.low, row.high, row.result, row.summary) == (ratio.low, ratio.high, "pass", "demo")
    assert "target <= 1.05: pass" in capsys.readouterr().out
    report.add("sizes", "marker", "0", target="1", passed=True)  # the script's own decision wins
    assert report.rows[-1].result == "pass"
    report.save(tmp_path / "json", tmp_path / "md")
    payload = json.loads((tmp_path / "json" / "demo.json").read_text())
    assert payload["schema"] == 2
    for key in ("commit", "date", "machine", "cpus", "python", "torch", "lightning"):
        assert key in payload["environment"], key
    assert set(payload["load"]) == {"before", "after", "limit", "enforced"}
    assert "measurements" in payload
    assert (tmp_path / "md" / "demo.md").read_text() == render_markdown(payload)
    summary = (tmp_path / "md" / "summary" / "demo.md").read_text()
    assert "with callback / plain" in summary and "marker" not in summary


def test_markdown_wide_tables_without_empty_columns_or_repeated_sections():
    rows = []
    report = Report("w", "cmd")
    for setting in ("mnist1d", "digits"):
        for preset in ("mild", "medium"):
            value = f"+1.0 pp [{setting}]"
            rows.append(report.add("test accuracy − baseline", preset, value, column=setting))
    report.add("choice", "mild", "mild-c", note="scores {'mild-a': -0.167, 'mild-b': 0.533}")
    text = report.markdown()
    lines = text.splitlines()
    assert "|  | mnist1d | digits |" in lines  # setting x preset, no target or note column (all empty)
    assert "| mild | +1.0 pp [mnist1d] | +1.0 pp [digits] |" in lines
    assert sum("test accuracy − baseline" in line for line in lines) == 1  # a heading, not a column
    # braces would be read as an attribute list by attr_list and the cell would show nothing
    assert "&#123;'mild-a': -0.167, 'mild-b': 0.533&#125;" in text and "{" not in text.split("Reproduce")[0]
    for line in lines:
        if line.startswith("| measurement"):
            assert line == "| measurement | value | note |"


def test_cell_escapes_pipes_and_braces_outside_code_spans():
    assert harness.cell("a | b") == "a \\| b"
    assert harness.cell("x {a} `y {b}`") == "x &#123;a&#125; `y {b}`"


def test_the_published_markdown_is_what_the_json_results_render_to():
    """Docs tables are never edited by hand: each is exactly the rendering of its result file."""
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert results
    for path in results:
        payload = json.loads(path.read_text())
        if "rows" not in payload:
            continue
        md = ROOT / "docs" / "benchmarks" / "results" / f"{payload['name']}.md"
        hint = f"{md.name}: run `python benchmarks/harness.py render`"
        assert md.read_text() == render_markdown(payload), hint
        for group in {r["summary"] for r in payload["rows"] if r.get("summary")}:
            summary = md.parent / "summary" / f"{group}.md"
            rows = [r for r in payload["rows"] if r.get("summary") == group]
            assert summary.read_text() == render_markdown(payload, rows), summary.name
