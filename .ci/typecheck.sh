#!/usr/bin/env bash
# Type checks: the package at the strictness set in pyproject.toml ([tool.mypy]), then the typed usage
# file under --strict as a user's code is checked (the package's own errors silenced, as for an installed
# package; the first run already checks them). Each run keeps its own cache, so a re-run is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
mypy
mypy --strict --follow-imports=silent --cache-dir .mypy_cache/strict-user tests/typing/quickstart_typed.py
