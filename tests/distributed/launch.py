"""Run a standalone script under Lightning's ``ddp`` launcher (2 CPU processes, gloo) from a test.

Lightning's ``ddp`` launcher re-executes the current command for rank 1, so distributed runs must start
from a standalone script, never from inside the pytest process. Scripts write what each rank saw to files
under ``out_dir`` (e.g. ``rank0.pt``, ``rank1.pt``); the test asserts on those files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

REPO_ROOT = Path(__file__).resolve().parents[2]

#: FSDP2 (``fully_shard``) runs on CPU ranks from torch 2.6; before, it creates CUDA streams unconditionally.
FSDP2_ON_CPU = torch.__version__ >= "2.6"
needs_cpu_fsdp2 = pytest.mark.skipif(
    not FSDP2_ON_CPU,
    reason=f"torch {torch.__version__}: FSDP2 (fully_shard) creates CUDA streams, so it runs on CPU ranks"
    " only from torch 2.6 (the GPU paths are the same code)",
)


def run_ddp_script(script: str | Path, out_dir: str | Path, *args: str, timeout: float = 240) -> None:
    """Run ``script out_dir *args`` in a fresh interpreter; fail the test with its output on error.

    Args:
        script: path of a Python script that builds a ``Trainer(accelerator="cpu", devices=2,
            strategy="ddp")`` and writes per-rank results into ``out_dir``.
        out_dir: directory passed as the script's first argument.
        *args: further command-line arguments for the script.
        timeout: seconds before the run is killed (a hung collective must fail, not hang CI).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(out_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(out_dir),
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")[-4000:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-4000:]
        msg = f"DDP script {script} timed out after {timeout}s (hung collective?)\n{out}"
        raise AssertionError(msg) from err
    if proc.returncode != 0:
        raise AssertionError(
            f"DDP script {script} failed with exit code {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )


class DestroyProcessGroup(Callback):
    """Test-only: destroy the gloo process group at ``teardown``, on every rank (put it last).

    Lightning destroys the default process group at exit only for NCCL. With gloo, ``ddp_spawn`` workers
    exit with it alive and its threads are torn down during interpreter finalization, which now and then
    aborts a worker after the fit has finished ("terminate called without an active exception", SIGABRT),
    and the spawn join then fails the test. Seen once in a full local run, never in isolation.
    """

    def teardown(self, trainer, pl_module, stage) -> None:  # noqa: D102
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
