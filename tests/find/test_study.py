"""Workers sharing a study: a trial left by a dead worker is claimed once; heartbeats keep live ones."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna

from lightning_reg.find.study import RunResult, StudyWorker, open_storage, trial_cost

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_of_a_dead_worker_is_claimed_by_exactly_one_of_two_workers(tmp_path) -> None:
    journal = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(journal))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    trial.set_user_attr("cost", 0.5)
    # two workers, each with its own view of the journal (as two processes would have)
    views = [optuna.load_study(study_name="s", storage=open_storage(journal)) for _ in range(2)]
    workers = [StudyWorker(shared=True, verbose=0) for _ in range(2)]
    claimed = [w.claim_stale(v) for w, v in zip(workers, views)]
    assert [len(c) for c in claimed] == [1, 0]
    frozen = optuna.load_study(study_name="s", storage=open_storage(journal)).trials[0]
    assert frozen.state.name == "FAIL" and trial_cost(frozen).cost == 0.5


def test_a_running_trial_is_stale_only_without_a_recent_heartbeat() -> None:
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("worker", "another-machine:1234")
    worker = StudyWorker(stale_after=300.0, verbose=0)
    trial.set_user_attr("heartbeat", time.time() - 10)
    assert not worker.is_stale(study, study.trials[0])
    trial.set_user_attr("heartbeat", time.time() - 301)
    assert worker.is_stale(study, study.trials[0])


def test_a_heartbeat_is_written_while_a_long_run_trains() -> None:
    study = optuna.create_study()
    trial = study.ask()
    worker = StudyWorker(stale_after=5.0, verbose=0)  # a heartbeat every second

    def train(record):
        first = study.trials[0].user_attrs["heartbeat"]
        time.sleep(2.5)  # one long epoch: no progress recorded, the heartbeat still goes on
        assert study.trials[0].user_attrs["heartbeat"] > first + 0.5
        return RunResult(0.1, cost=1.0, epochs=1)

    result = worker.run(study, trial, train, retry=lambda: None)
    assert result.value == 0.1 and study.trials[0].user_attrs["worker"] == worker.name


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    blocked = ("lightning", "pytorch_lightning", "optuna", "optuna_integration")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ImportError(f"blocked: {name}")
block = Block()
sys.meta_path.insert(0, block)
import lightning_reg, lightning_reg.find
assert "SearchSpace" in lightning_reg.find.__all__ and "find_regularization" in lightning_reg.find.__all__
for module in ('space', 'stats', 'budget', 'result'):
    __import__(f'lightning_reg.find.{module}')
block.blocked = ("lightning", "pytorch_lightning")  # Optuna now, still no Lightning
import lightning_reg.find.study
print("ok")
"""


def test_the_pure_modules_need_neither_lightning_nor_optuna_and_the_package_imports_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
