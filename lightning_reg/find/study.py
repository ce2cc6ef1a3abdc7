"""How several workers share one Optuna study: storages, heartbeats, trials left by a worker that died.

Every worker (a process running the finder against the same storage) writes its name (``host:pid``) and a
heartbeat into the trial it trains, and records the trial's cost after every validation. A running trial
whose worker is gone (its process no longer exists on this machine, or its heartbeat is older than
``stale_after`` seconds) is marked failed by the first worker that notices; the storage lets exactly one
worker finish a trial, so exactly one of them enqueues it again. A trial interrupted here (Ctrl-C) or
stopped by an error is marked failed and enqueued again before the interrupt or the error goes on, so the
search started again (after the cause is fixed) runs it first.

Nothing here imports Lightning.

Example:
    >>> import optuna
    >>> worker = StudyWorker(verbose=0)
    >>> study = optuna.create_study(storage=open_storage(None))
    >>> trial = study.ask()
    >>> result = worker.run(study, trial, lambda record: RunResult(0.5, cost=1.0), retry=lambda: None)
    >>> study.trials[0].value, trial_cost(study.trials[0]).cost
    (0.5, 1.0)
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lightning_reg._shared.validation import check_int, check_number
from lightning_reg.find.budget import TrialCost

__all__ = ["RunResult", "StudyWorker", "open_storage", "trial_cost"]


def open_storage(storage: str | os.PathLike[str] | BaseStorage | None) -> BaseStorage:
    """Return the Optuna storage for ``storage``.

    ``None``: in memory (one process); a URL with ``://`` (``sqlite:///finder.db``, ``postgresql://...``):
    Optuna's RDB storage (SQLite for one process, a database server for several machines); any other
    string or path: Optuna's journal file storage (several processes on one machine, or machines sharing
    a filesystem with working file locks); a storage object is returned as it is.

    Example:
        >>> type(open_storage(None)).__name__
        'InMemoryStorage'
    """
    if storage is None:
        return InMemoryStorage()
    if isinstance(storage, BaseStorage):
        return storage
    text = os.fspath(storage)
    if "://" in text:
        return RDBStorage(text)
    return JournalStorage(JournalFileBackend(text))


def trial_cost(trial: FrozenTrial) -> TrialCost:
    """Return what the budget counts of a trial: its state, its recorded cost, whether it was declined.

    Example:
        >>> import optuna
        >>> study = optuna.create_study()
        >>> study.add_trial(optuna.trial.create_trial(value=0.3, user_attrs={"cost": 0.25}))
        >>> trial_cost(study.trials[0])
        TrialCost(number=0, state='COMPLETE', cost=0.25, declined=False)
    """
    return TrialCost(
        trial.number,
        trial.state.name,
        min(1.0, float(trial.user_attrs.get("cost", 0.0))),
        declined="declined" in trial.user_attrs,
    )


@dataclass(frozen=True)
class RunResult:
    """How one run ended.

    Args:
        value: the metric of the weights it returned (``None`` when it was pruned).
        cost: the fraction of a full run's optimizer steps it trained.
        epochs: the epochs it trained.
        pruned: whether the pruner stopped it.

    Example:
        >>> RunResult(None, cost=0.25, pruned=True).pruned
        True
    """

    value: float | None
    cost: float = 0.0
    epochs: int = 0
    pruned: bool = False


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # pragma: no cover - elsewhere only the heartbeat tells
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


class StudyWorker:
    """One process's part in a study that several processes may share.

    Args:
        shared: whether other processes may share the study (the lines then carry this process's id).
        stale_after: seconds without heartbeat after which a running trial of another machine is taken to
            have lost its worker; the heartbeat is written every fifth of it.
        verbose: ``0`` quiet, ``1`` one line per event.

    Example:
        >>> StudyWorker(stale_after=60.0, verbose=0).interval
        12.0
    """

    def __init__(self, shared: bool = False, stale_after: float = 300.0, verbose: int = 1) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: The name written into the trials this worker trains.
        self.name = f"{self.host}:{self.pid}"
        self.prefix = f"[find pid {self.pid}]" if shared else "[find]"
        self.stale_after = check_number("stale_after", stale_after, low=0.0, low_open=True)
        self.interval = max(1.0, self.stale_after / 5)
        self.verbose = check_int("verbose", verbose, low=0, high=1)
        self.running: set[tuple[str, int]] = set()

    def say(self, line: str) -> None:
        """Print one line (with ``verbose``)."""
        if self.verbose:
            print(f"{self.prefix} {line}", flush=True)

    def is_stale(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether a running trial has lost its worker: its process is gone, or its heartbeat is old.

        Example:
            >>> import optuna
            >>> w = StudyWorker(verbose=0)
            >>> study = optuna.create_study()
            >>> t = study.ask()
            >>> t.set_user_attr("worker", "elsewhere:1")
            >>> w.is_stale(study, study.trials[0])   # heartbeat: its start, just now
            False
        """
        worker = trial.user_attrs.get("worker")
        if worker == self.name:  # left by an earlier, interrupted call in this process
            return (study.study_name, trial.number) not in self.running
        if isinstance(worker, str):
            host, _, pid = worker.rpartition(":")
            if host == self.host and pid.isdigit() and not _pid_alive(int(pid)):
                return True
        beat = trial.user_attrs.get("heartbeat")
        if beat is None:
            beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        return time.time() - float(beat) > self.stale_after

    def claim_stale(self, study: optuna.Study) -> list[FrozenTrial]:
        """Mark the running trials whose worker is gone as failed; return those this worker claimed.

        The state change is the claim: the storage lets one worker finish a trial, once, so of several
        workers that notice the same trial exactly one gets it (and enqueues it again).
        """
        claimed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self.is_stale(study, t):
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, ValueError):  # another worker claimed it first
                continue
            self.say(f"trial {t.number}: its worker {t.user_attrs.get('worker', '?')} is gone; marked failed")
            claimed.append(t)
        return claimed

    @contextlib.contextmanager
    def _heartbeat(self, trial: optuna.trial.Trial) -> Iterator[None]:
        """Write the trial's heartbeat every ``interval`` seconds while it trains (long epochs included)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.interval):
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except (UpdateFinishedTrialError, RuntimeError):  # taken over, or the storage closed
                    return

        trial.set_user_attr("heartbeat", time.time())
        thread = threading.Thread(target=beat, name=f"find-heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def run(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        train: Callable[[Callable[[float, int], None]], RunResult],
        retry: Callable[[], None],
    ) -> RunResult | None:
        """Train ``trial`` and tell the study how it ended.

        ``train(record)`` trains and returns the ``RunResult``; it calls
        ``record(cost, epochs)`` after every validation, which stores them with a heartbeat. A pruned run
        is told as pruned (Optuna keeps the last reported value). An interrupt or an error marks the trial
        failed (with ``interrupted`` or the message in ``error`` among its attributes), calls ``retry()``
        (which enqueues it again) and goes on.

        Returns:
            The result, or ``None`` when another worker took the trial over meanwhile (its result is
            dropped: that worker runs it again).
        """

        def record(cost: float, epochs: int) -> None:
            trial.set_user_attr("cost", cost)
            trial.set_user_attr("epochs", epochs)
            trial.set_user_attr("heartbeat", time.time())

        key = (study.study_name, trial.number)
        trial.set_user_attr("worker", self.name)
        self.running.add(key)
        try:
            with self._heartbeat(trial):
                result = train(record)
            record(result.cost, result.epochs)
            if result.pruned:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, result.value)
            return result
        except UpdateFinishedTrialError:
            self.say(f"trial {trial.number}: taken over by another worker (no heartbeat seen); dropped here")
            return None
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during fit into SystemExit
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            retry()
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
            study.tell(trial, state=TrialState.FAIL)
            retry()  # once the cause is fixed, the search started again runs it first
            raise
        finally:
            self.running.discard(key)
