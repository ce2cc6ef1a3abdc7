#!/usr/bin/env bash
# The GPU check: everything in lightning-reg that needs CUDA, in one command, on a machine with a GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after pip install -e ".[dev]"
#
# 1. pytest -m gpu              the tests marked `gpu` (they skip on CPU-only machines)
# 2. every benchmark script that takes --device, with --device cuda (result files under
#    benchmarks/results/ and docs/benchmarks/results/: commit them, the docs include them)
# 3. benchmarks/gpu_sync_check.py   a fit with every callback and the mixin whose per-step code runs under
#                               torch.cuda.set_sync_debug_mode("error")
#
# Exits non-zero if any part fails (all parts run; a summary is printed at the end). Logs: $OUT_DIR
# (default: a new temporary directory). GPU_CHECK_QUICK=1 passes --quick to the benchmarks that have it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
OUT_DIR="${OUT_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT_DIR"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch.cuda.is_available() is False; run this on a machine with a CUDA GPU." >&2
    exit 2
fi
python -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

declare -a FAILED=()
run() {  # run NAME COMMAND...: log to $OUT_DIR/NAME.log, remember failures
    local name="$1"; shift
    echo "== $name: $*"
    if "$@" >"$OUT_DIR/$name.log" 2>&1; then
        echo "   ok ($(tail -n 1 "$OUT_DIR/$name.log"))"
    else
        echo "   FAILED (exit $?); last lines of $OUT_DIR/$name.log:"
        tail -n 25 "$OUT_DIR/$name.log" | sed 's/^/     /'
        FAILED+=("$name")
    fi
}

# 1. tests marked gpu
run pytest-gpu python -m pytest -m gpu -ra -q

# 2. benchmarks that take --device
for script in benchmarks/*.py; do
    case "$script" in benchmarks/harness.py|benchmarks/gpu_sync_check.py) continue ;; esac
    help="$(python "$script" --help 2>/dev/null || true)"
    if ! grep -q -- "--device" <<<"$help"; then
        echo "== $(basename "$script" .py): no --device option, skipped"
        continue
    fi
    extra=()
    if [[ "${GPU_CHECK_QUICK:-0}" == "1" ]] && grep -q -- "--quick" <<<"$help"; then extra+=(--quick); fi
    run "bench-$(basename "$script" .py)" python "$script" --device cuda ${extra[@]+"${extra[@]}"}
done

# 3. the sync-free claim, on a real fit
run sync-check python benchmarks/gpu_sync_check.py

echo
if ((${#FAILED[@]})); then
    echo "gpu_check: FAILED: ${FAILED[*]} (logs in $OUT_DIR/)"
    exit 1
fi
echo "gpu_check: all parts passed (logs in $OUT_DIR/); commit the result files the benchmarks wrote."
