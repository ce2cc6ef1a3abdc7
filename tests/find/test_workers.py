"""Several finder processes sharing one journal storage: every trial trains once; a killed worker's trial
is taken over, and the search resumes from the storage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from lightning_reg.find.search import find_regularization
from lightning_reg.find.space import SearchSpace
from lightning_reg.find.study import open_storage
from tests.find.toy import ToyData, ToyNet

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
SPACE = SearchSpace(weight_decay=(0.001, 0.3), clipping=("zclip", "norm"), patience=(0.3, 0.9))
TRAINER = {"accelerator": "cpu", "max_epochs": 4, "num_sanity_val_steps": 0}
LINE = re.compile(r"^\[find pid (\d+)\] trial (\d+): (complete|pruned)", re.M)
COMPARE = re.compile(r"^\[find pid (\d+)\] compare (\d+)/(\d+):", re.M)


def _config(tmp_path: Path, step_sleep: float) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "tests.find.toy.ToyNet", "init_args": {"step_sleep": step_sleep}},
        "data": {"class_path": "tests.find.toy.ToyData"},
        "trainer": TRAINER,
        # = SPACE
        "space": {"weight_decay": [0.001, 0.3], "clipping": ["zclip", "norm"], "patience": [0.3, 0.9]},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _worker(
    config: Path, journal: Path, out: Path | None, budget: float, seeds: int
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "lightning_reg.find", "--config", str(config), "--metric", "val_acc"]
    cmd += ["--mode", "max", "--budget", str(budget), "--seeds", str(seeds), "--storage", str(journal)]
    cmd += ["--out", str(out or "null")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker {proc.pid} timed out:\n{out[-3000:]}") from None
    assert proc.returncode == 0, out[-3000:]
    return out


def _study(journal: Path, name: str = "lightning-reg-find") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(journal))


def test_two_workers_share_one_journal_storage_and_train_every_trial_once(tmp_path) -> None:
    config, journal = _config(tmp_path, step_sleep=0.1), tmp_path / "journal.log"
    workers = [_worker(config, journal, tmp_path / "out", budget=6, seeds=1) for _ in range(2)]
    outputs = [_finish(w) for w in workers]
    lines = [(int(pid), int(n)) for out in outputs for pid, n, _ in LINE.findall(out)]
    numbers = [n for _, n in lines]
    assert len(numbers) == len(set(numbers)), f"a trial trained twice: {sorted(numbers)}"
    assert {pid for pid, _ in lines} == {w.pid for w in workers}, "both workers trained trials"
    study = _study(journal)
    trained = {t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert set(numbers) == trained  # every trial the storage holds was trained by exactly one worker
    assert sum(t.user_attrs.get("cost", 0.0) for t in study.trials) <= 6 + 1e-9
    # the comparison's jobs (each configuration on seed 1) are split the same way: each runs once
    jobs = [int(job) for out in outputs for _, job, _ in COMPARE.findall(out)]
    totals = {int(n) for out in outputs for _, _, n in COMPARE.findall(out)}
    assert len(totals) == 1 and sorted(jobs) == list(range(1, totals.pop() + 1))
    assert (tmp_path / "out" / "choice.yaml").is_file()


def test_a_killed_workers_trial_is_taken_over_and_the_search_resumes(tmp_path, capsys) -> None:
    config, journal = _config(tmp_path, step_sleep=0.1), tmp_path / "journal.log"
    first = _worker(config, journal, None, budget=5, seeds=0)
    killed = None
    deadline = time.monotonic() + TIMEOUT_S
    while killed is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if not journal.exists():
            continue
        try:
            trials = _study(journal).trials
        except KeyError:  # the study is not created yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("cost", 0) > 0]
        if running and any(t.state.name == "COMPLETE" for t in trials):
            killed = running[0].number
            first.send_signal(signal.SIGKILL)  # mid-trial, after at least one finished trial
    first.communicate(timeout=TIMEOUT_S)
    assert killed is not None, "the first worker never reached its second trial"

    # the same search, resumed here (in this process, so without a second start-up of Python)
    find_regularization(
        ToyNet, ToyData(), trainer_kwargs=TRAINER, metric="val_acc", mode="max", space=SPACE, budget=5,
        seeds=0, storage=journal,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"trial {killed}: its worker " in out and "is gone; marked failed" in out
    study = _study(journal)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state.name == "FAIL" and "error" not in by_number[killed].user_attrs
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == by_number[killed].params
    assert killed not in {int(n) for _, n, _ in LINE.findall(out)}
    # what the killed run trained is spent, and counted: the search still stays in its budget
    assert by_number[killed].user_attrs["cost"] > 0
    assert sum(t.user_attrs.get("cost", 0.0) for t in study.trials) <= 5 + 1e-9
