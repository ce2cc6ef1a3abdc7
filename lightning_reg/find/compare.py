"""The final comparison: the choice, no regularization and the best preset, re-run on fresh seeds.

Each (configuration, seed) pair is one job, and each job is one trial of a second Optuna study in the same
storage, so workers sharing the storage split the jobs as they split the search: a fresh trial takes the
next job in order (its number, less the retries before it), a retried trial carries its job. Every job
trains once to the end (no pruning); the values are the validation metric of the weights each run returns,
paired by seed in ``lightning_reg.find.result.FinderResult``.

Example:
    >>> import optuna
    >>> fresh, retry = optuna.trial.create_trial(value=1.0), optuna.trial.create_trial(
    ...     value=1.0, user_attrs={"retry_of": 0, "job": 0})
    >>> fresh.number, retry.number = 0, 1
    >>> job_indices([fresh, retry])
    {0: 0, 1: 0}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from lightning_reg.find.objective import TrainingSetup, run_candidate
from lightning_reg.find.space import Candidate
from lightning_reg.find.study import StudyWorker, trial_cost

__all__ = ["job_indices", "run_comparison"]

_POLL_S = 1.0  # how often a worker waiting for the others' runs reads the storage again


def job_indices(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """Return the job of every comparison trial: a retry carries its own; a fresh trial takes the next.

    Args:
        trials: the comparison study's trials (a retry has the user attributes ``retry_of`` and ``job``,
            set when it was enqueued).

    Returns:
        ``{trial number: job index}``; an index past the last job means the trial was not needed.
    """
    jobs, fresh = {}, 0
    for t in sorted(trials, key=lambda t: t.number):
        if "retry_of" in t.user_attrs:
            jobs[t.number] = int(t.user_attrs["job"])
        else:
            jobs[t.number] = fresh
            fresh += 1
    return jobs


def run_comparison(
    storage: BaseStorage,
    study_name: str,
    direction: Literal["minimize", "maximize"],
    arms: Sequence[tuple[str, Candidate]],
    seeds: Sequence[int],
    setup: TrainingSetup,
    worker: StudyWorker,
) -> tuple[dict[str, tuple[float, ...]], dict[str, float]]:
    """Run every (configuration, seed) job once, across the workers sharing ``storage``.

    Returns when every job has a value (waiting for other workers' runs if needed). A run stopped by an
    error or an interrupt is enqueued again before the error goes on.

    Args:
        storage: the shared Optuna storage.
        study_name: the comparison study's name (it names the choice and the seeds, so a new choice or
            other seeds start a new comparison).
        direction: ``"minimize"`` or ``"maximize"``.
        arms: ``(label, candidate)`` of each configuration.
        seeds: the seeds.
        setup: the training setup.
        worker: this process's worker.

    Returns:
        ``({label: values in the order of seeds}, {label: full-run equivalents trained})``.

    Raises:
        Exception: what stopped one of this worker's runs.
    """
    jobs = [(label, s) for s in seeds for label, _ in arms]
    candidates = dict(arms)
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, load_if_exists=True
    )

    def retry(number: int) -> None:
        job = job_indices(study.get_trials(deepcopy=False))[number]
        study.enqueue_trial({}, user_attrs={"retry_of": number, "job": job})

    while True:
        for t in worker.claim_stale(study):
            retry(t.number)
        trials = study.get_trials(deepcopy=False)
        index = job_indices(trials)
        done = {index[t.number] for t in trials if t.state == TrialState.COMPLETE}
        if done >= set(range(len(jobs))):
            break
        fresh = sum("retry_of" not in t.user_attrs for t in trials)
        if any(t.state == TrialState.WAITING for t in trials) or fresh < len(jobs):
            _run_job(study, jobs, candidates, setup, worker, retry)
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(_POLL_S)
        else:  # pragma: no cover - a job is always done, running, waiting or still to be asked for
            raise RuntimeError(f"comparison jobs {sorted(set(range(len(jobs))) - done)} have no run")
    trials = study.get_trials(deepcopy=False)
    index = job_indices(trials)
    value = {index[t.number]: float(t.value) for t in trials if t.state == TrialState.COMPLETE}  # type: ignore[arg-type]
    cost: dict[str, float] = {}
    for t in trials:
        if index[t.number] < len(jobs):
            label = jobs[index[t.number]][0]
            cost[label] = cost.get(label, 0.0) + trial_cost(t).cost
    values = {label: tuple(value[jobs.index((label, s))] for s in seeds) for label, _ in arms}
    return values, cost


def _run_job(
    study: optuna.Study,
    jobs: list[tuple[str, int]],
    candidates: dict[str, Candidate],
    setup: TrainingSetup,
    worker: StudyWorker,
    retry: Callable[[int], None],
) -> None:
    trial = study.ask()
    job = job_indices(study.get_trials(deepcopy=False))[trial.number]
    if job >= len(jobs):  # another worker took the last job between our look and our ask
        trial.set_user_attr("declined", "no job left")
        study.tell(trial, state=TrialState.FAIL)
        return
    label, seed = jobs[job]
    trial.set_user_attr("job", job)
    result = worker.run(
        study,
        trial,
        lambda record: run_candidate(setup, candidates[label], seed, on_progress=record),
        retry=lambda: retry(trial.number),
    )
    if result is not None:
        worker.say(
            f"compare {job + 1}/{len(jobs)}: {label}, seed {seed}, {setup.metric} {result.value:.4g}, "
            f"cost {result.cost:.2f}"
        )
