"""The finder in one process: pruning, the budget, the objective, an interrupted search resumed."""

import signal

import lightning as L
import optuna
import pytest
import torch

from lightning_reg import get_preset
from lightning_reg.find.objective import TrainingSetup, model_factory, run_candidate
from lightning_reg.find.search import find_regularization
from lightning_reg.find.space import Candidate, SearchSpace
from lightning_reg.find.study import open_storage
from tests.find.toy import ToyData, ToyNet

TRAINER = {"max_epochs": 4, "accelerator": "cpu", "num_sanity_val_steps": 0}
# a small space keeps the tests quick; every kind of component is still in it
SPACE = SearchSpace(
    weight_decay=(1e-3, 0.3),
    clipping=("zclip", "norm"),
    patience=(0.3, 0.9),
    model_args={"dropout": (0.0, 0.3)},
)


class _Curve(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_loss"]))


def test_the_objective_is_the_metric_of_the_restored_weights_not_of_the_last_epoch() -> None:
    curve = _Curve()
    setup = TrainingSetup(
        model_factory(ToyNet, {"hidden": 64, "lr": 0.05}),
        ToyData(),  # its test_dataloader raises: a run never touches test data
        {**TRAINER, "max_epochs": 12},
        metric="val_loss",
        mode="min",
    )
    candidate = Candidate(
        get_preset("mild", label_smoothing=0.0, weight_decay=1e-4, clipping=None, patience=3)
    )
    result = run_candidate(setup, candidate, seed=0, callbacks=[curve])
    assert curve.values[-1] > min(curve.values) + 0.05  # the run overfits after its best epoch
    assert result.value == pytest.approx(min(curve.values), abs=1e-6)
    assert result.epochs == len(curve.values) < 12 and result.cost == pytest.approx(len(curve.values) / 12)


def test_poor_trials_are_pruned_on_their_curve_and_the_budget_counts_what_they_trained() -> None:
    # a pruner that stops every search trial at its first report: the presets still run to the end
    pruner = optuna.pruners.ThresholdPruner(upper=-1.0)
    result = find_regularization(
        ToyNet, ToyData(), trainer_kwargs=TRAINER, space=SPACE, budget=4.5, seeds=0, pruner=pruner, verbose=0
    )
    states = [(t.number, t.state, t.ladder, t.cost) for t in result.trials]
    assert states[:3] == [
        (0, "COMPLETE", "mild", 1.0),
        (1, "COMPLETE", "medium", 1.0),
        (2, "COMPLETE", "strong", 1.0),
    ]
    # 3 full runs + pruned trials of a quarter each, while one more full run fits in 4.5
    assert [(s, c) for _, s, _, c in states[3:]] == [("PRUNED", 0.25)] * 3
    assert result.search_cost == pytest.approx(3.75) and result.choice.preset.name in (
        "mild",
        "medium",
        "strong",
    )
    assert result.arms == () and result.compare_cost == 0


def test_a_search_compares_its_choice_with_no_regularization_paired_by_seed(tmp_path) -> None:
    result = find_regularization(
        ToyNet,
        ToyData(),
        trainer_kwargs=TRAINER,
        metric="val_loss",  # a continuous objective: the toy's accuracies tie, which no pruner can rank
        mode="min",
        space=SPACE,
        budget=5,
        seeds=2,
        out=tmp_path,
        verbose=0,
    )
    assert result.search_cost <= 5 and [a.label for a in result.arms][:2] == ["choice", "none"]
    assert result.seeds == (1, 2) and all(len(a.values) == 2 for a in result.arms)
    assert result.arms[0].candidate == result.choice and not result.arms[1].candidate.early_stopping
    assert set(result.differences()) == {a.label for a in result.arms[1:]}
    # default SuccessiveHalving: search trials judged against the presets' curves from a quarter of the run
    assert any(t.state == "PRUNED" for t in result.trials)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "choice.py",
        "choice.yaml",
        "comparison.md",
        "trials.png",
    ]


class _StopFifthRun(L.Callback):
    """Raise ``error`` in the fifth run (the second search trial), once."""

    runs = 0
    stopped_at: int | None = None

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        type(self).runs += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if type(self).runs == 5 and type(self).stopped_at is None:
            type(self).stopped_at = trainer.current_epoch
            raise self.error("stop here")


@pytest.mark.parametrize(
    ("error", "raised", "attr"),
    [(KeyboardInterrupt, SystemExit, "interrupted"), (RuntimeError, RuntimeError, "error")],
    ids=["interrupt", "error"],
)
def test_a_stopped_search_resumes_from_its_storage(tmp_path, monkeypatch, error, raised, attr) -> None:
    monkeypatch.setattr(_StopFifthRun, "runs", 0)
    monkeypatch.setattr(_StopFifthRun, "stopped_at", None)
    journal = tmp_path / "journal.log"
    kwargs = dict(
        trainer_kwargs={**TRAINER, "callbacks": [_StopFifthRun(error)]},
        space=SPACE,
        budget=6,
        seeds=0,
        storage=journal,
        pruner=optuna.pruners.NopPruner(),
        verbose=0,
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(raised):  # Lightning turns a KeyboardInterrupt into SystemExit(1)
            find_regularization(ToyNet, ToyData(), **kwargs)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    study = optuna.load_study(study_name="lightning-reg-find", storage=open_storage(journal))
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE", 4: "FAIL", 5: "WAITING"}
    assert study.trials[4].user_attrs[attr] and study.trials[5].user_attrs["retry_of"] == 4

    result = find_regularization(ToyNet, ToyData(), **kwargs)
    study = optuna.load_study(study_name="lightning-reg-find", storage=open_storage(journal))
    trained = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert [t.number for t in trained] == [0, 1, 2, 3, 5]  # nothing ran twice; the stopped one ran again
    assert study.trials[5].params == study.trials[4].params
    # the budget counts what the stopped run trained before it stopped
    stopped = next(t for t in result.trials if t.number == 4)
    assert (stopped.state, stopped.cost) == ("FAIL", (_StopFifthRun.stopped_at + 1) / 4)
    assert result.search_cost == pytest.approx(sum(t.cost for t in result.trials)) and result.search_cost <= 6


def test_a_metric_the_model_does_not_log_stops_the_first_run_after_one_epoch() -> None:
    epochs = []
    setup = TrainingSetup(model_factory(ToyNet), ToyData(), TRAINER, metric="val_f1", mode="max")
    with pytest.raises(ValueError, match=r"no 'val_f1' in validation; it logs \['val_acc', 'val_loss'\]"):
        run_candidate(setup, Candidate(get_preset("mild")), seed=0, on_progress=lambda c, e: epochs.append(e))
    assert epochs == []  # stopped at the first validation, before any progress was recorded


def test_bad_arguments_are_refused_before_any_training() -> None:
    with pytest.raises(ValueError, match=r"`mode` is required with metric='val_acc'"):
        find_regularization(ToyNet, ToyData(), trainer_kwargs=TRAINER, metric="val_acc")
    with pytest.raises(ValueError, match=r"must set `max_epochs` \(or `max_steps`\)"):
        find_regularization(ToyNet, ToyData(), trainer_kwargs={"accelerator": "cpu"})
    with pytest.raises(ValueError, match=r"`budget` must be at least 4 full runs .* got 3"):
        find_regularization(ToyNet, ToyData(), trainer_kwargs=TRAINER, budget=3)
    with pytest.raises(ValueError, match=r"`model_kwargs` sets \['weight_decay'\]: the finder sets them"):
        find_regularization(ToyNet, ToyData(), model_kwargs={"weight_decay": 0.1}, trainer_kwargs=TRAINER)
    with pytest.raises(ValueError, match=r"early stopping may watch 'accuracy', but the preset's callbacks"):
        find_regularization(ToyNet, ToyData(), trainer_kwargs=TRAINER, metric="accuracy", mode="max")
    with pytest.raises(TypeError, match=r"takes no `preset` argument"):
        find_regularization(lambda: torch.nn.Linear(1, 1), ToyData(), trainer_kwargs=TRAINER)


def test_a_run_on_several_devices_is_refused() -> None:
    trainer = {**TRAINER, "devices": 2, "strategy": "ddp"}
    with pytest.raises(ValueError, match=r"one process, on one device; this Trainer has world size 2"):
        find_regularization(ToyNet, ToyData(), trainer_kwargs=trainer, budget=5, seeds=0, verbose=0)
