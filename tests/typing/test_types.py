"""The package's annotations as a user's type checker sees them: real signatures, not ``Any``.

One mypy run (``--strict``, the package's own errors silenced as for an installed package) over the typed
usage file, which must pass, and a snippet of wrong calls, each of which must be reported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.typing import quickstart_typed

ROOT = Path(__file__).resolve().parents[2]

WRONG = """\
from lightning_reg import DropPath, EarlyStopping, GradientMonitor, weight_decay_param_groups

EarlyStopping("val_loss", patience="3")
DropPath(0.1, mode="rows")
GradientMonitor(log_every_n_step=5)
name: str = EarlyStopping("val_loss").best_epoch
weight_decay_param_groups("model", 0.05)
"""

EXPECTED = {
    3: 'Argument "patience" to "EarlyStopping" has incompatible type "str"; expected "int"',
    4: 'Argument "mode" to "DropPath" has incompatible type "Literal[\'rows\']"',
    5: 'Unexpected keyword argument "log_every_n_step" for "GradientMonitor"',
    6: 'Incompatible types in assignment (expression has type "int | None", variable has type "str")',
    7: 'Argument 1 to "weight_decay_param_groups" has incompatible type "str"',
}


def test_the_typed_usage_file_runs() -> None:
    """What the type checker accepts also runs: every construction, and the quickstart's fit."""
    assert len(quickstart_typed.callbacks()) == 8
    quickstart_typed.the_real_signatures_are_seen()
    quickstart_typed.PenalisedMixed()
    quickstart_typed.PresetClassifier()
    quickstart_typed.main()


@pytest.mark.slow
def test_mypy_passes_the_typed_usage_file_and_reports_each_wrong_call(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    snippet = tmp_path / "wrong_calls.py"
    snippet.write_text(WRONG)
    usage = ROOT / "tests" / "typing" / "quickstart_typed.py"
    cache = ROOT / ".mypy_cache" / "strict-user"
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(cache)]
    result = subprocess.run(
        [*command, "--no-error-summary", str(usage), str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert not [e for e in errors if "quickstart_typed.py" in e], result.stdout
    reported = {int(m[1]): e for e in errors if (m := re.search(r"wrong_calls\.py:(\d+):", e))}
    for line, message in EXPECTED.items():
        assert line in reported and message in reported[line], (line, message, result.stdout, result.stderr)
    assert set(reported) == set(EXPECTED), result.stdout
    assert result.returncode == 1
