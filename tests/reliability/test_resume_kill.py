"""Resume equivalence and SIGKILL recovery with every callback and the mixin together (fresh processes).

Run A trains 5 epochs uninterrupted. Run B is SIGKILLed (a) at an epoch boundary, (b) mid-epoch, (c) at
whatever point it has reached once a checkpoint file appears; a fresh process resumes from B's latest
loadable checkpoint. Everything must equal run A exactly: final (restored best) weights, the weights
before the restore, every callback's ``state_dict()``, optimizer, scheduler and mixer state, counters,
best epoch/step/score and the last logged metrics.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_reg._shared.lightning_compat import LIGHTNING_EXACT_MID_EPOCH_RESUME
from tests.reliability._setup import assert_same

SCRIPT = Path(__file__).with_name("train_all.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 180


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(out: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )
    assert proc.returncode == 0, f"train_all.py {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out / "result.pt", weights_only=False)


def _kill_when(out: Path, ready: callable, *args: str) -> None:
    """Start a run, wait until ``ready()``, SIGKILL it and check that it really died from the signal."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(
                    f"run ended before the kill point:\n{proc.stderr.read().decode()[-6000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError("kill point not reached in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.pt").exists(), "the killed run must not have finished"


def _latest_loadable_checkpoint(ckpt_dir: Path) -> Path:
    """Newest checkpoint by global step that loads (a file being written at the kill may be incomplete)."""
    files = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: int(re.search(r"step=(\d+)", p.name).group(1)))
    for path in reversed(files):
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a truncated file is exactly what we skip
            continue
        return path
    raise AssertionError(f"no loadable checkpoint in {ckpt_dir}: {[p.name for p in files]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run_a")
    result = _run(out)
    # the scenario is meaningful: the best epoch is not the last, so the restore changes the weights
    assert result["best"]["best_epoch"] < result["current_epoch"] - 1
    assert result["best"]["restored"]
    assert any(not torch.equal(v, result["last_weights"][k]) for k, v in result["final_weights"].items())
    return result


def _assert_equal_runs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert len(a["callback_states"]) == 7  # every callback of the library reported a state
    for key in a:
        assert_same(a[key], b[key], key)


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT + 60)
@pytest.mark.parametrize(
    ("where", "pause_args", "expected_ckpt"),
    [
        ("epoch_boundary", ("--pause-epoch", "2"), "ep-epoch=1-step=16.ckpt"),
        pytest.param(
            "mid_epoch",
            ("--pause-step", "33"),
            "st-epoch=4-step=33.ckpt",  # after the BN freeze
            marks=pytest.mark.skipif(
                not LIGHTNING_EXACT_MID_EPOCH_RESUME,
                reason="Lightning < 2.5 continues a mid-epoch checkpoint elsewhere",
            ),
        ),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    uninterrupted: dict, tmp_path: Path, where: str, pause_args: tuple[str, str], expected_ckpt: str
) -> None:
    run_b = tmp_path / "b"
    run_b.mkdir()
    _kill_when(run_b, (run_b / "paused").exists, *pause_args)
    ckpt = _latest_loadable_checkpoint(run_b / "ckpt")
    assert ckpt.name == expected_ckpt
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    _assert_equal_runs(uninterrupted, _run(resumed, "--resume", str(ckpt)))


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT + 60)
@pytest.mark.skipif(
    not LIGHTNING_EXACT_MID_EPOCH_RESUME,
    reason="the newest checkpoint may be a mid-epoch one, which Lightning < 2.5 continues elsewhere",
)
def test_sigkill_at_an_arbitrary_point_after_a_checkpoint(uninterrupted: dict, tmp_path: Path) -> None:
    """No pause: the run is killed wherever it is once the epoch-1 checkpoint file exists."""
    run_b = tmp_path / "b"
    run_b.mkdir()
    _kill_when(run_b, lambda: any((run_b / "ckpt").glob("ep-epoch=1-*.ckpt")))
    ckpt = _latest_loadable_checkpoint(run_b / "ckpt")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    _assert_equal_runs(uninterrupted, _run(resumed, "--resume", str(ckpt)))
