"""Re-run published panel runs alone and check that they reproduce bit for bit.

    PYTHONPATH=. python benchmarks/panel_recheck.py [SETTING:CONFIG:SEED:PHASE ...]

The panel's numbers are accuracies of seeded single-thread runs, so the machine's load must not change
them (it changes wall time only). This script re-runs the given runs (default: a sample of both phases)
one at a time, each in a fresh process, and compares validation accuracy, test accuracy, epochs trained
and the validation-accuracy curve with the records in ``outputs/panel/<phase>.jsonl``. Exit status 1 if
any run differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (
    ("digits-vit", "strong", 100, "heldout"),
    ("tokens-bert", "none", 100, "heldout"),
    ("tokens-bert", "finder", 101, "heldout"),
    ("tokens-bert", "medium", 102, "heldout"),
    ("tokens-transformer", "strong-a", 0, "select"),
    ("tokens-gru", "finder", 100, "heldout"),
)


def main(argv: list[str]) -> int:
    runs = [(s, c, int(seed), p) for s, c, seed, p in (a.split(":") for a in argv)] if argv else SAMPLE
    records = {}
    for phase in {r[3] for r in runs}:
        for line in (ROOT / "outputs" / "panel" / f"{phase}.jsonl").read_text().splitlines():
            r = json.loads(line)
            records[(r["setting"], r["config"], r["seed"], phase)] = r
    differ = 0
    for run in runs:
        load = os.getloadavg()[0]
        code = f"import json, benchmarks.panel as p; print('REC', json.dumps(p.run_one(*{run!r})))"
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        ).stdout
        new, old = json.loads(out.split("REC ", 1)[1]), records[run]
        keys = ["val_acc", "epochs_run", "val_acc_curve"] + (["test_acc"] if run[3] == "heldout" else [])
        changed = {k: (old[k], new[k]) for k in keys if new[k] != old[k]}
        differ += bool(changed)
        print(run, changed or "identical", f"(load before {load:.2f})", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
