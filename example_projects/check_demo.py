"""Check that the demo's numbers published in README.md and on the docs' examples page are what it prints.

    python -m example_projects.compare --out DIR          # the demo (about 2 minutes on 2 cores)
    python -m example_projects.check_demo DIR/summary.md  # README.md and the docs against that run

Without an argument it checks only that README.md's table agrees with the published result file
``docs/examples/results/compare.md`` (no run; what the test suite does). The demo writes its table and
summary lines to ``summary.md`` exactly as it prints them; the published file holds the same lines (written
by ``--publish``) plus the command. README.md shows some of the table's columns between
``<!-- demo-table -->`` and ``<!-- /demo-table -->``, cell for cell as the demo writes them. The time per
run is the only column allowed to differ (it measures the machine, not the method).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PUBLISHED = ROOT / "docs" / "examples" / "results" / "compare.md"
#: Columns that measure the machine rather than the method: never compared.
VOLATILE_COLUMNS = ("time/run",)
README_TABLE = re.compile(r"<!-- demo-table -->\n(.*?)\n<!-- /demo-table -->", re.S)


def parse_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first Markdown table in ``markdown``."""
    lines = [line.strip() for line in markdown.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise ValueError("no Markdown table found")
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    header, body = table[0], [row for row in table[1:] if not all(set(c) <= set("-: ") for c in row)]
    return header, body


def table_differences(published: str, printed: str, where: str) -> list[str]:
    """Cells of the published table that differ from the printed one (published columns only)."""
    head, rows = parse_table(published)
    printed_head, printed_rows = parse_table(printed)
    out = [f"{where}: column {c!r} is not one the demo prints" for c in head if c not in printed_head]
    by_name = {row[0]: row for row in printed_rows}
    if [row[0] for row in rows] != [row[0] for row in printed_rows]:
        out.append(f"{where}: rows {[r[0] for r in rows]}, the demo prints {[r[0] for r in printed_rows]}")
    for row in rows:
        printed_row = by_name.get(row[0])
        if printed_row is None:
            continue
        for column, value in zip(head, row):
            if column in VOLATILE_COLUMNS or column not in printed_head:
                continue
            shown = printed_row[printed_head.index(column)]
            if value != shown:
                out.append(f"{where}: {row[0]} / {column}: {value!r}, the demo prints {shown!r}")
    return out


def _summary_lines(markdown: str) -> list[str]:
    """The lines after the table (baseline, alert and recommendation lines), without the command."""
    lines = markdown.split("\n\nReproduce:", 1)[0].splitlines()
    return [line for line in lines if line.strip() and not line.startswith("|")]


def differences(printed: str, published: str, readme: str) -> list[str]:
    """Everything in the published file and README.md that differs from the demo's ``summary.md``."""
    out = table_differences(published, printed, "docs/examples/results/compare.md")
    if _summary_lines(published) != _summary_lines(printed):
        out.append(
            "docs/examples/results/compare.md: the lines under the table differ from the demo's:\n  "
            + "\n  ".join(_summary_lines(published))
            + "\nthe demo:\n  "
            + "\n  ".join(_summary_lines(printed))
        )
    m = README_TABLE.search(readme)
    if m is None:
        out.append("README.md: no table between <!-- demo-table --> and <!-- /demo-table -->")
    else:
        out += table_differences(m.group(1), printed, "README.md")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m example_projects.check_demo", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "summary", nargs="?", type=Path, help="summary.md of a demo run (default: the published file)"
    )
    a = p.parse_args(argv)
    published = PUBLISHED.read_text()
    printed = a.summary.read_text() if a.summary else published
    found = differences(printed, published, README.read_text())
    if found:
        print("The published demo numbers differ from the demo's output:", *found, sep="\n", file=sys.stderr)
        print(
            "Publish the run's numbers: `python -m example_projects.compare --publish`, then copy its table's"
            " columns into README.md.",
            file=sys.stderr,
        )
        return 1
    print(f"README.md and {PUBLISHED.relative_to(ROOT)} agree with {a.summary or 'the published file'}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
