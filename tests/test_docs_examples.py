"""The documentation's code: every runnable example runs and prints what its page says; code lines are short.

A page marks a complete program with ``<!-- runnable -->`` on the line before its ```` ```python ```` fence,
and the output it shows with ``<!-- output -->`` before a ```` ```text ```` fence that follows the program.
Each program runs in its own process as ``__main__`` (tiny data, a few epochs: seconds each); every line of
the shown output must appear in what it prints, in order, where ``...`` stands for any text (numbers that
depend on the machine, the ends of long lines).

Importing torch and Lightning costs more than most examples' training, so on POSIX one helper process
imports them once and forks a fresh child per example; the child's file descriptors 1 and 2 go to a file,
so everything the program prints (Lightning's log lines and warnings included) is captured in order.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
OUTPUT = "<!-- output -->"
EXAMPLE = re.compile(
    re.escape(RUNNABLE) + r"\n```python\n(?P<code>.*?)```\n"
    r"(?:(?P<between>(?:(?!```|<!--).)*?)" + re.escape(OUTPUT) + r"\n```text\n(?P<output>.*?)```)?",
    re.S,
)
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
#: A code line longer than this hides its end (often a comment) behind a scrollbar on the site.
MAX_CODE_LINE = 88


def pages() -> list[Path]:
    """Markdown pages of the site (result files are written by scripts, not by hand)."""
    excluded = ("benchmarks/results/", "examples/results/", "_ext/")
    return sorted(p for p in DOCS.rglob("*.md") if not p.relative_to(DOCS).as_posix().startswith(excluded))


@dataclass
class Example:
    page: Path
    index: int
    code: str
    output: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS).as_posix()}#{self.index}"


def examples() -> list[Example]:
    found = []
    for page in pages():
        for i, m in enumerate(EXAMPLE.finditer(page.read_text())):
            found.append(Example(page, i, m.group("code"), m.group("output")))
    return found


def code_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """``(first line number, info string, lines)`` of every fenced block in a Markdown text."""
    blocks, current, start, info, fence = [], None, 0, "", ""
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if current is None and m:
            current, start, info, fence = [], number + 1, m.group("info").strip(), m.group("fence")
        elif current is not None and m and m.group("fence").startswith(fence) and not m.group("info"):
            blocks.append((start, info, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def matches(expected: str, output: str) -> tuple[bool, str]:
    """Whether every expected line appears in ``output``, in order (``...``: any text)."""
    lines = [line.strip() for line in output.splitlines()]
    position = 0
    for want in (w.strip() for w in expected.splitlines()):
        if not want:
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        hit = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if hit is None:
            return False, want
        position = hit + 1
    return True, ""


EXAMPLES = examples()


def test_every_method_card_and_getting_started_has_a_runnable_example():
    pages_with = {e.page.relative_to(DOCS).as_posix() for e in EXAMPLES}
    cards = {p.relative_to(DOCS).as_posix() for p in (DOCS / "techniques").glob("*.md")}
    missing = sorted((cards | {"getting-started.md"}) - pages_with)
    assert not missing, f"pages without a <!-- runnable --> example: {missing}"
    for e in EXAMPLES:
        elided = [line for line in e.code.splitlines() if re.search(r"(=|^)\s*\.\.\.\s*(#.*)?$", line)]
        assert not elided, f"{e.id}: a runnable example elides code: {elided}"


TIMEOUT_S = 300
#: Imports once, then per line ``<script>\t<output file>`` forks a child that runs the script as
#: ``__main__`` in the script's directory with its stdout and stderr in the output file; prints its exit code.
FORK_SERVER = r"""
import os, runpy, sys, traceback
import lightning, torch, torchvision  # the imports every example pays, paid once
import lightning_reg
print("ready", flush=True)
for line in sys.stdin:
    script, out = line.rstrip("\n").split("\t")
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1); os.dup2(fd, 2)
        os.chdir(os.path.dirname(script))
        sys.argv, sys.path[0] = [script], os.path.dirname(script)
        code = 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", PYTHONWARNINGS="default")


@pytest.fixture(scope="module")
def run_program() -> Iterator:
    """``run_program(script) -> (exit code, output)``: a forked child per script, or a new process."""
    if not hasattr(os, "fork"):

        def run_in_new_process(script: Path) -> tuple[int, str]:
            proc = subprocess.run(
                [sys.executable, str(script)],
                cwd=script.parent,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one stream, in the order the lines were written
                text=True,
                timeout=TIMEOUT_S,
            )
            return proc.returncode, proc.stdout

        yield run_in_new_process
        return
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )

    def read_line() -> str:
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT_S)
        if not ready:
            server.kill()
            raise AssertionError(f"an example ran for more than {TIMEOUT_S} s")
        return server.stdout.readline().strip()

    assert read_line() == "ready"

    def run_forked(script: Path) -> tuple[int, str]:
        output = script.with_suffix(".out")
        server.stdin.write(f"{script}\t{output}\n")
        server.stdin.flush()
        code = int(read_line())
        return code, output.read_text()

    try:
        yield run_forked
    finally:
        server.stdin.close()
        server.wait(timeout=60)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_runnable_example_runs_and_prints_what_the_page_shows(example: Example, tmp_path: Path, run_program):
    script = tmp_path / "example.py"
    script.write_text(example.code)
    code, output = run_program(script)
    assert code == 0, f"{example.id} failed:\n{output[-6000:]}"
    if example.output is not None:
        ok, missing = matches(example.output, output)
        assert ok, f"{example.id}: the page shows {missing!r}, the program printed:\n{output[-6000:]}"


def test_a_failing_program_fails_its_test(tmp_path: Path, run_program):
    script = tmp_path / "fails.py"
    script.write_text("import warnings\nprint('before')\nwarnings.warn('shown')\nraise ValueError('bad')\n")
    code, output = run_program(script)
    assert code == 1 and "before" in output and "UserWarning: shown" in output and "ValueError: bad" in output


def test_output_matching_is_ordered_and_honours_ellipses():
    out = "noise\nEarlyStopping: restored epoch 4, step 30, val_loss=0.7345\nbest epoch 4\n"
    assert matches("EarlyStopping: restored epoch 4, step 30, val_loss=...\nbest epoch 4", out)[0]
    assert not matches("best epoch 4\nEarlyStopping: restored epoch ...", out)[0]  # order matters
    assert not matches("best epoch 5", out)[0]


def test_python_blocks_in_the_docs_compile():
    for page in [*pages(), README]:
        for start, info, lines in code_blocks(page.read_text()):
            if info.split()[:1] == ["python"]:
                source = "\n".join(lines)
                try:
                    compile(source, f"{page.name}:{start}", "exec")
                except SyntaxError as err:
                    raise AssertionError(f"{page.relative_to(ROOT)}:{start}: {err}") from err


def test_code_lines_fit_the_page():
    """Code wider than the column gets a scrollbar, and the end of the line (often a comment) is hidden."""
    long = []
    for page in [*pages(), README]:
        for start, _, lines in code_blocks(page.read_text()):
            for offset, line in enumerate(lines):
                if len(line) > MAX_CODE_LINE:
                    long.append(f"{page.relative_to(ROOT)}:{start + offset} ({len(line)} characters)")
    assert not long, f"code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)
