"""The README's quickstart block runs as written (tiny random data, a few seconds on CPU)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_exactly_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'pip install -e ".[dev]" && python -m example_projects.compare',
        'pip install -e ".[dev]" && pytest',
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && pytest' in ci


def test_readme_quickstart_runs(tmp_path):
    text = README.read_text()
    block = re.search(r"<!-- quickstart -->\n```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "quickstart.py"
    script.write_text(block)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"EarlyStopping: restored epoch \d+, step \d+, val_loss=", out), out[-3000:]
    assert re.search(r"OverfittingMonitor: loss \(train_loss vs val_loss, min\); criteria trend", out), out
