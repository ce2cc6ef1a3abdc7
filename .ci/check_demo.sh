#!/usr/bin/env bash
# The demo's numbers in README.md and on the docs' examples page must be what the demo prints: run the demo
# as the README says (about 2 minutes on 2 cores; its runs are seeded, so the table does not depend on the
# machine's load) and compare its table and summary lines with the published ones, cell by cell (the time
# per run excepted).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
python -m example_projects.compare --out "$out"
python -m example_projects.check_demo "$out/summary.md"
