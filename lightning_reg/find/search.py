"""The regularization finder: an Optuna study over the presets and the components' strengths, on a budget.

``find_regularization`` runs three phases against one Optuna storage:

1. **the ladder**: every preset of the search space as it is (enqueued once, when the study is created),
   trained to the end so the best preset is measured fairly; their validation curves are reported to
   the pruner, so later trials are compared with them;
2. **the search**: Optuna's sampler (TPE) proposes candidates; each run reports its validation curve
   through ``optuna-integration``'s ``PyTorchLightningPruningCallback`` and Optuna's pruner (successive
   halving, first decision after a quarter of the run) stops the poor ones. A trial starts only while the
   budget, in full-run equivalents, has room for one more full run (see ``lightning_reg.find.budget``);
3. **the comparison** (``lightning_reg.find.compare``): the best trial, no regularization and the best
   preset re-run on fresh seeds.

The finder drives Optuna through its ask-and-tell interface and reads every decision from the storage, so
the same call in several processes (or machines) sharing one storage splits the work, and a call started
again resumes an interrupted search (see ``lightning_reg.find.study``).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FixedTrial, FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback
from torch import nn
from typing_extensions import override

from lightning_reg._shared.validation import check_int, check_mode, check_number, check_str
from lightning_reg.find.budget import TrialCost, may_start_trial, spent_runs
from lightning_reg.find.compare import run_comparison
from lightning_reg.find.objective import TrainingSetup, model_factory, run_candidate, split_user_callbacks
from lightning_reg.find.output import comparison_table, write_outputs
from lightning_reg.find.result import ArmResult, FinderResult, TrialSummary
from lightning_reg.find.space import (
    Candidate,
    SearchSpace,
    ladder_params,
    no_regularization,
    suggest_candidate,
)
from lightning_reg.find.study import StudyWorker, open_storage, trial_cost
from lightning_reg.stochastic_depth.layers import DEFAULT_BRANCH_ENDS, BranchEnd, find_drop_rate_modules

__all__ = ["default_pruner", "find_regularization"]

_POLL_S = 1.0  # how often a worker waiting for the others' trials reads the storage again


def default_pruner(max_epochs: int | None) -> optuna.pruners.BasePruner:
    """Successive halving that first decides after a quarter of the run, keeping the better half each time.

    Regularization often pays off late (a regularized run starts slower), so no trial is judged on its
    first epochs: the first rung is a quarter of ``max_epochs`` (without it, Optuna's own estimate).

    Example:
        >>> type(default_pruner(40)).__name__
        'SuccessiveHalvingPruner'
    """
    min_resource: int | str = max(1, max_epochs // 4) if max_epochs else "auto"
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=2)


class _ReportCurve(Callback):
    """Reports the metric of a trial the pruner must not stop (a ladder preset) after every validation.

    It asks the pruner too, without obeying: pruners that keep per-rung records (successive halving)
    then count the presets among the competitors of later trials.
    """

    def __init__(self, trial: optuna.trial.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if not trainer.sanity_checking and value is not None:
            self.trial.report(float(value), step=pl_module.current_epoch)
            self.trial.should_prune()


# ------------------------------------------------------------------------------------------ setting up
def _signature_default(model: Callable[..., Any], name: str) -> Any:
    """Return the default of ``model``'s argument ``name`` (``inspect.Parameter.empty`` if none)."""
    try:
        param = inspect.signature(model).parameters.get(name)
    except (TypeError, ValueError):  # pragma: no cover - callables without a signature
        return inspect.Parameter.empty
    return inspect.Parameter.empty if param is None else param.default


def _has_residual_blocks(module: nn.Module, branch_ends: Mapping[Any, BranchEnd] | None) -> bool:
    """Whether drop-path has somewhere to go: drop-path modules, or residual blocks the presets know."""
    if find_drop_rate_modules(module):
        return True
    types = tuple(DEFAULT_BRANCH_ENDS) + tuple(k for k in branch_ends or {} if isinstance(k, type))
    names = {str(k) for k in branch_ends or {} if not isinstance(k, type)}
    for m in module.modules():
        cls = type(m)
        if isinstance(m, types) or cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names:
            return True
    return False


def _resolve_space(
    space: SearchSpace,
    model: Callable[..., Any],
    build: Callable[[Candidate], LightningModule],
    branch_ends: Mapping[Any, BranchEnd] | None,
    worker: StudyWorker,
) -> SearchSpace:
    """Fit the space to the model.

    ``dropout`` is searched when the model takes one (then the presets' dropout stand-in is not); drop-path
    only with residual blocks, the dropout stand-in only without them.
    """
    if space.model_args is None:
        takes_dropout = "dropout" in _arguments(model) and _signature_default(model, "dropout") is not None
        space = space.replace(model_args={"dropout": (0.0, 0.5)} if takes_dropout else {})
        if takes_dropout:
            worker.say("the model takes `dropout`: searched in [0, 0.5] (SearchSpace.model_args changes it)")
    probe = build(no_regularization(space))
    residual = _has_residual_blocks(probe, branch_ends)
    if space.drop_path_rate is not None and not residual:
        space = space.replace(drop_path_rate=None)
        worker.say(
            f"drop-path is not searched: {type(probe).__name__} has no residual block the presets find "
            "(pass branch_ends={BlockClass: 'last_branch_layer'} for your own blocks)"
        )
    if space.dropout_rate is not None and (residual or "dropout" in (space.model_args or {})):
        space = space.replace(dropout_rate=None)  # drop-path, or the model's own dropout, takes its place
    return space


def _arguments(model: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(model).parameters)
    except (TypeError, ValueError):  # pragma: no cover - callables without a signature
        return set()


def _open_study(
    storage: BaseStorage,
    name: str,
    direction: Literal["minimize", "maximize"],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    identity: Mapping[str, str],
) -> tuple[optuna.Study, bool]:
    """Create the study (``True``: this worker created it) or load it and check it searches the same thing."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner
        )
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return study, True
    have = {"direction": study.direction.name.lower(), **study.user_attrs}
    for key, value in {"direction": direction, **identity}.items():
        if have.get(key, value) != value:
            raise ValueError(
                f"the storage's study {name!r} was started with {key}={have[key]}; this call has "
                f"{key}={value}: resume it with the same settings, or use another `study_name`."
            )
    return study, False


def _enqueue_ladder(
    study: optuna.Study,
    space: SearchSpace,
    model: Callable[..., Any],
    model_kwargs: Mapping[str, Any],
    setup: TrainingSetup,
) -> None:
    """Enqueue every preset of the ladder as it is, with the model arguments given (or their defaults)."""
    values = {k: model_kwargs.get(k, _signature_default(model, k)) for k in space.model_args or {}}
    values = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    for name in space.presets:
        params = ladder_params(
            space, name, values, metric=setup.metric, mode=setup.mode, stand_in=space.drop_path_rate is None
        )
        study.enqueue_trial(params, user_attrs={"ladder": name})


# ------------------------------------------------------------------------------------------ the search
class _Search:
    """The ladder and the search: this worker's part of the shared study, within the budget."""

    def __init__(
        self,
        study: optuna.Study,
        setup: TrainingSetup,
        space: SearchSpace,
        budget: float,
        seed: int,
        worker: StudyWorker,
    ) -> None:
        self.study, self.setup, self.space = study, setup, space
        self.budget, self.seed, self.worker = budget, seed, worker

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def costs(self) -> list[TrialCost]:
        return [trial_cost(t) for t in self.trials()]

    def run(self) -> None:
        """Train trials while the budget has room; then wait until the other workers' trials end."""
        while True:
            for t in self.worker.claim_stale(self.study):
                self.retry(t.number)
            trials = self.trials()
            waiting = any(t.state == TrialState.WAITING for t in trials)  # already counted in the budget
            if waiting or may_start_trial([trial_cost(t) for t in trials], self.budget):
                self.one_trial()
            elif any(t.state == TrialState.RUNNING for t in trials):
                time.sleep(_POLL_S)
            else:
                return

    def retry(self, number: int) -> None:
        """Enqueue a failed trial's parameters again, if the budget has room for one more run."""
        old = next(t for t in self.trials() if t.number == number)
        if not may_start_trial(self.costs(), self.budget):
            self.worker.say(f"trial {number}: the budget has no room to run it again")
            return
        attrs: dict[str, Any] = {"retry_of": number}
        if "ladder" in old.user_attrs:
            attrs["ladder"] = old.user_attrs["ladder"]
        self.study.enqueue_trial(dict(old.params), user_attrs=attrs)

    def one_trial(self) -> None:
        trial = self.study.ask()
        if not may_start_trial(self.costs(), self.budget, number=trial.number):
            trial.set_user_attr("declined", "budget")  # another worker took the last room meanwhile
            self.study.tell(trial, state=TrialState.FAIL)
            self.worker.say(f"trial {trial.number}: declined, the budget has no room for another full run")
            return
        setup = self.setup
        candidate = suggest_candidate(trial, self.space, metric=setup.metric, mode=setup.mode)
        ladder = trial.user_attrs.get("ladder")
        watch: Callback = (
            _ReportCurve(trial, setup.metric)  # the presets run to the end: the fair reference
            if ladder
            else PyTorchLightningPruningCallback(trial, monitor=setup.metric)
        )
        result = self.worker.run(
            self.study,
            trial,
            lambda record: run_candidate(setup, candidate, self.seed, callbacks=[watch], on_progress=record),
            retry=lambda: self.retry(trial.number),
        )
        if result is None:
            return
        value = next(t.value for t in self.trials() if t.number == trial.number)
        state = f"pruned after {result.epochs} epochs" if result.pruned else "complete"
        self.worker.say(
            f"trial {trial.number}: {state}{f' (preset {ladder})' if ladder else ''}, {setup.metric} "
            f"{'-' if value is None else f'{value:.4g}'}, cost {result.cost:.2f}, search "
            f"{spent_runs(self.costs()):.2f}/{self.budget:g} | {candidate.describe()}"
        )


def _best(trials: list[FrozenTrial], mode: str) -> FrozenTrial:
    sign = -1.0 if mode == "max" else 1.0
    return min(trials, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def _candidate(trial: FrozenTrial, space: SearchSpace, setup: TrainingSetup) -> Candidate:
    return suggest_candidate(FixedTrial(dict(trial.params)), space, metric=setup.metric, mode=setup.mode)


def _arms(
    study: optuna.Study, space: SearchSpace, setup: TrainingSetup
) -> tuple[list[tuple[str, Candidate]], FrozenTrial]:
    """Return the comparison's configurations: the best trial, no regularization, the best preset."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise RuntimeError(
            f"no trial of the study {study.study_name!r} completed: every run was pruned or failed; raise "
            "`budget`, or look at the runs (a failed trial carries its error in its `error` attribute)."
        )
    best = _best(done, setup.mode)
    arms = [("choice", _candidate(best, space, setup)), ("none", no_regularization(space))]
    ladder = [t for t in done if "ladder" in t.user_attrs]
    if ladder:
        top = _best(ladder, setup.mode)
        if top.number != best.number:
            arms.append((f"preset {top.user_attrs['ladder']}", _candidate(top, space, setup)))
    return arms, best


def _summary(trial: FrozenTrial, space: SearchSpace, setup: TrainingSetup) -> TrialSummary:
    try:
        text = _candidate(trial, space, setup).describe()
    except (KeyError, ValueError):  # a trial that failed before all its parameters were drawn
        text = "(parameters incomplete)"
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=None if trial.value is None else float(trial.value),
        cost=trial_cost(trial).cost,
        description=text,
        ladder=trial.user_attrs.get("ladder"),
        curve=tuple(sorted((int(k), float(v)) for k, v in trial.intermediate_values.items())),
    )


# ------------------------------------------------------------------------------------------ the finder
def _trainer_kwargs(trainer_kwargs: Mapping[str, Any] | None, worker: StudyWorker) -> dict[str, Any]:
    kwargs = dict(trainer_kwargs or {})
    if kwargs.get("max_epochs") in (None, -1) and kwargs.get("max_steps") in (None, -1):
        raise ValueError(
            "`trainer_kwargs` must set `max_epochs` (or `max_steps`): one full run is the unit of the budget."
        )
    kwargs.setdefault("devices", 1)  # one run, one device: several devices are used by several workers
    kwargs["callbacks"], dropped = split_user_callbacks(kwargs.get("callbacks"))
    if dropped:
        worker.say(f"the runs leave out the Trainer callbacks {dropped} (each candidate brings its own)")
    return kwargs


def find_regularization(
    model: Callable[..., LightningModule],
    datamodule: LightningDataModule,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    metric: str = "val_loss",
    mode: str | None = None,
    space: SearchSpace | None = None,
    budget: float = 10.0,
    seeds: int = 3,
    seed: int = 0,
    storage: str | os.PathLike[str] | BaseStorage | None = None,
    study_name: str = "lightning-reg-find",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    branch_ends: Mapping[Any, BranchEnd] | None = None,
    out: str | os.PathLike[str] | None = None,
    stale_after: float = 300.0,
    verbose: int = 1,
) -> FinderResult:
    """Search the regularization of ``model`` on the validation data of ``datamodule``, on a budget.

    Every run builds ``model(**model_kwargs, preset=<a Preset>, weight_decay=None, **model args)``, trains
    it with the preset's callbacks (``preset_callbacks``) and measures ``metric`` on the weights early
    stopping restores (``trainer.validate``). The presets of the space run first, as they are; Optuna's
    TPE then searches the components' strengths and its pruner stops poor runs; the best trial, no
    regularization and the best preset are finally re-run on ``seeds`` fresh seeds and compared, paired
    by seed.

    Args:
        model: a LightningModule class (or factory) taking ``preset`` and passing it to ``RegularizedModule``.
        datamodule: the data; only its training and validation data are used.
        model_kwargs: the model's other arguments.
        trainer_kwargs: the Trainer's arguments; ``max_epochs`` (or ``max_steps``) is one full run. Every
            run trains in this process on one device (``devices`` defaults to 1; start one worker per
            device to use several). Logging, checkpoints, progress bar and model summary are off in every
            run; callbacks that early stopping, the preset or checkpointing would replace are left out (with
            a note).
        metric: the validation metric to optimise, as the model logs it.
        mode: ``"min"`` or ``"max"``; required unless ``metric`` is ``"val_loss"``.
        space: the search space (default ``SearchSpace()``; drop-path is left out for a model without a
            residual block, and ``dropout`` is searched when the model takes it).
        budget: the search budget in full-run equivalents, the ladder included: at least one more than
            the number of presets in the ladder.
        seeds: comparison seeds (``0``: no comparison); each costs up to one full run per compared
            configuration, on top of the budget.
        seed: the seed of every search run; the comparison uses ``seed + 1`` to ``seed + seeds``.
        storage: where the study lives (see ``open_storage``): ``None`` in memory; a journal file path or
            an RDB URL to resume, or to share the search between workers running this same call.
        study_name: the study's name in ``storage`` (the comparison's studies are named after it).
        sampler: Optuna sampler (default ``TPESampler`` with ``constant_liar``, seeded by ``seed`` when
            the study is in memory).
        pruner: Optuna pruner (default ``default_pruner``).
        branch_ends: the model's own residual blocks for drop-path (see ``preset_callbacks``).
        out: a folder for the outputs (config fragment, Python arguments, tables, plot), or ``None``.
        stale_after: seconds after which a running trial without heartbeat is taken to have lost its
            worker (on the same machine a dead process is seen at once).
        verbose: ``0`` quiet; ``1`` one line per trial and comparison run, and the comparison table; ``2``
            also Lightning's own info lines of every run.

    Returns:
        The ``lightning_reg.find.result.FinderResult``.

    Raises:
        ValueError: a bad argument, a run without a known length, a metric the model does not log, or a
            storage holding a study of another metric, mode or search space.
        RuntimeError: no trial completed.
        Exception: what stopped a run (the run is enqueued again, for the search started again).
    """
    metric = check_str("metric", metric)
    mode = check_mode(mode, "metric", metric)
    budget = check_number("budget", budget, low=1.0)
    seeds = check_int("seeds", seeds, low=0)
    seed = check_int("seed", seed, low=0)
    verbose = check_int("verbose", verbose, low=0, high=2)
    worker = StudyWorker(shared=storage is not None, stale_after=stale_after, verbose=min(verbose, 1))
    build = model_factory(model, model_kwargs)
    tkw = _trainer_kwargs(trainer_kwargs, worker)
    setup = TrainingSetup(build, datamodule, tkw, metric, mode, branch_ends, lightning_info=verbose >= 2)
    space = _resolve_space(space or SearchSpace(), model, build, branch_ends, worker)
    for name in space.monitor_choices(metric, mode):
        if not name.startswith(("val_", "val/", "validation_")):
            raise ValueError(
                f"early stopping may watch {name!r}, but the preset's callbacks pair each watched metric "
                "with its training twin by a 'val_' or 'val/' prefix (val_acc -> train_acc): log the "
                "validation metrics with such a prefix, or set SearchSpace.monitors to metrics that have one."
            )
    if budget < len(space.presets) + 1:
        raise ValueError(
            f"`budget` must be at least {len(space.presets) + 1} full runs (the {len(space.presets)} presets "
            f"of the ladder run to the end, plus one search trial); got {budget:g}."
        )
    store = open_storage(storage)
    direction: Literal["minimize", "maximize"] = "maximize" if mode == "max" else "minimize"
    if sampler is None:
        seeded = isinstance(store, InMemoryStorage)  # workers sharing a storage must not draw alike
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=5, constant_liar=True, seed=seed if seeded else None
        )
    identity = {"metric": metric, "mode": mode, "space": repr(space)}
    pruner = pruner or default_pruner(setup.trainer_kwargs.get("max_epochs"))
    study, created = _open_study(store, study_name, direction, sampler, pruner, identity)
    if created:  # the ladder is enqueued once, by the worker that created the study
        _enqueue_ladder(study, space, model, model_kwargs or {}, setup)

    _Search(study, setup, space, budget, seed, worker).run()
    trials = [
        t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not trial_cost(t).declined
    ]
    search_cost = spent_runs(trial_cost(t) for t in trials)
    arms, best = _arms(study, space, setup)
    worker.say(
        f"search done: {len(trials)} trials, {search_cost:.2f} of {budget:g} full runs; best: trial "
        f"{best.number}, {metric} {best.value:.4g}, {arms[0][1].describe()}"
    )
    compare_seeds = tuple(seed + 1 + i for i in range(seeds))
    arm_results: tuple[ArmResult, ...] = ()
    if seeds:
        name = f"{study_name}/compare/trial-{best.number}/seeds-{'-'.join(map(str, compare_seeds))}"
        values, costs = run_comparison(store, name, direction, arms, compare_seeds, setup, worker)
        arm_results = tuple(ArmResult(label, c, values[label], costs.get(label, 0.0)) for label, c in arms)
    result = FinderResult(
        metric=metric,
        mode=mode,
        choice=arms[0][1],
        choice_trial=best.number,
        choice_value=float(best.value),  # type: ignore[arg-type]
        arms=arm_results,
        seeds=compare_seeds,
        trials=tuple(_summary(t, space, setup) for t in sorted(trials, key=lambda t: t.number)),
        budget=budget,
        search_cost=search_cost,
        compare_cost=sum(a.cost for a in arm_results),
    )
    if verbose:
        print(comparison_table(result), flush=True)
    if out is not None:
        paths = write_outputs(result, Path(out), branch_ends)
        worker.say("wrote " + ", ".join(str(p) for p in paths))
    return result
