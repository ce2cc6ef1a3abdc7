"""The finder's outputs: the fragment loads back through LightningCLI; the Python text runs; tables; plot."""

import yaml
from lightning.pytorch.cli import LightningCLI

import lightning_reg
from lightning_reg import GradientClipping, get_preset
from lightning_reg.find.output import (
    cli_fragment,
    comparison_table,
    plot_trials,
    python_arguments,
    trials_table,
    verdict,
)
from lightning_reg.find.result import ArmResult, FinderResult, TrialSummary
from lightning_reg.find.space import Candidate, SearchSpace, no_regularization
from lightning_reg.presets import PresetEarlyStopping, PresetSummary
from tests.find.toy import ToyData, ToyNet

CHOICE = Candidate(
    get_preset(
        "medium", weight_decay=0.0213, label_smoothing=0.05, clipping="norm", clip_max_norm=2.5, patience=7
    ),
    monitor="val_acc",
    mode="max",
    model_args={"dropout": 0.125},
)
TRIALS = (
    TrialSummary(0, "COMPLETE", 0.80, 1.0, "mild ...", "mild", ((0, 0.6), (1, 0.8))),
    TrialSummary(1, "PRUNED", 0.55, 0.25, "strong + ...", None, ((0, 0.55),)),
    TrialSummary(2, "COMPLETE", 0.86, 0.75, CHOICE.describe(), None, ((0, 0.7), (1, 0.86))),
)
RESULT = FinderResult(
    metric="val_acc",
    mode="max",
    choice=CHOICE,
    choice_trial=2,
    choice_value=0.86,
    arms=(
        ArmResult("choice", CHOICE, (0.86, 0.84, 0.88), 2.4),
        ArmResult("none", no_regularization(SearchSpace()), (0.80, 0.79, 0.83), 3.0),
        ArmResult("preset mild", Candidate(get_preset("mild")), (0.84, 0.84, 0.85), 2.9),
    ),
    seeds=(1, 2, 3),
    trials=TRIALS,
    budget=10.0,
    search_cost=2.0,
    compare_cost=8.3,
)


def test_the_fragment_loads_back_through_lightning_cli(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "tests.find.toy.ToyNet",
                    "init_args": {"hidden": 16, "weight_decay": 0.3},
                },
                "trainer": {"max_epochs": 2, "logger": False, "enable_checkpointing": False},
            }
        )
    )
    fragment = tmp_path / "choice.yaml"
    fragment.write_text(cli_fragment(RESULT))
    cli = LightningCLI(
        ToyNet,
        ToyData,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(base), "--config", str(fragment)],
    )
    model = cli.model
    assert model.preset == CHOICE.preset  # a Preset built from the fragment's mapping
    assert model.net[2].p == 0.125 and model.net[0].out_features == 16  # searched arg, and the base's
    assert model.regularization_config.weight_decay == 0.0213  # the preset's, not the base config's 0.3
    callbacks = {type(cb): cb for cb in cli.trainer.callbacks}
    es = callbacks[PresetEarlyStopping]
    assert (es.monitor, es.mode, es.patience) == ("val_acc", "max", 7)
    assert callbacks[GradientClipping].algorithm == "norm"
    assert callbacks[PresetSummary].preset == CHOICE.preset


def test_the_python_arguments_rebuild_the_choice() -> None:
    text = python_arguments(RESULT, model_name="ToyNet")
    namespace = {"lightning": __import__("lightning"), "ToyNet": lambda *a, **k: k}
    code = text.replace("(..., ", "(").replace("lightning.Trainer", "dict")
    exec(compile(code, "<choice>", "exec"), namespace)
    assert namespace["preset"] == CHOICE.preset
    assert namespace["model"] == {"preset": CHOICE.preset, "weight_decay": None, "dropout": 0.125}
    callbacks = namespace["trainer"]["callbacks"]
    assert [type(cb).__name__ for cb in callbacks] == [
        type(cb).__name__
        for cb in lightning_reg.preset_callbacks(CHOICE.preset, monitor="val_acc", mode="max")
    ]


def test_tables_pair_the_arms_by_seed_and_state_the_cost() -> None:
    table = comparison_table(RESULT)
    assert "| none | 0.8067 | +0.0533 [+0.039, +0.0677] | 0.8, 0.79, 0.83 |" in table  # choice - none
    assert "| preset mild |" in table and "Higher is better for val_acc" in table
    assert "total 10.30 full-run equivalents" in table
    # none: +0.053 [+0.039, +0.068] resolved; mild: +0.017 with an interval across 0 (hand-computed)
    expected = "the choice is better than none, within noise of preset mild (the choice scored better)."
    assert f"On these seeds {expected}" in table
    rows = trials_table(RESULT).splitlines()
    assert rows[3].startswith("| 1 | pruned | 0.55 | 0.25 |")
    assert rows[4].startswith("| 2 | **complete, chosen** | 0.86 | 0.75 |")


def test_the_plot_of_the_trials_is_written(tmp_path) -> None:
    path = plot_trials(RESULT, tmp_path / "plots" / "trials.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _result(
    mode: str, choice: tuple[float, ...], none: tuple[float, ...], mild: tuple[float, ...]
) -> FinderResult:
    arms = (
        ArmResult("choice", CHOICE, choice, 1.0),
        ArmResult("none", no_regularization(SearchSpace()), none, 1.0),
        ArmResult("preset mild", Candidate(get_preset("mild")), mild, 1.0),
    )
    metric = "val_loss" if mode == "min" else "val_acc"
    return FinderResult(metric, mode, CHOICE, 2, choice[0], arms, (1, 2, 3), (), 10.0, 8.0, 3.0)


def test_the_verdict_names_an_arm_that_beat_the_choice_and_which_way_the_metric_points() -> None:
    # val_loss: lower is better; none's loss is lower on every seed (resolved), mild's is lower on two of
    # three (mean 0.5 vs 0.51, interval across 0)
    r = _result("min", (0.50, 0.52, 0.51), (0.40, 0.41, 0.42), (0.45, 0.55, 0.50))
    assert verdict(r) == (
        "On these seeds the choice is worse than none, within noise of preset mild (preset mild scored"
        " better). Prefer none: the search measured the choice on one seed."
    )
    assert verdict(r) in comparison_table(r)
    # the same numbers as accuracies: the choice is ahead of both
    r = _result("max", (0.50, 0.52, 0.51), (0.40, 0.41, 0.42), (0.45, 0.55, 0.50))
    assert verdict(r) == (
        "On these seeds the choice is better than none, within noise of preset mild (the choice scored"
        " better)."
    )
    no_comparison = FinderResult("val_acc", "max", CHOICE, 2, 0.5, (), (), (), 10.0, 8.0, 0.0)
    assert verdict(no_comparison) == "" and "On these seeds" not in comparison_table(no_comparison)


def test_a_choice_that_is_a_ladder_preset_is_said_to_be_one_and_no_comparison_leaves_no_gap() -> None:
    ladder = TrialSummary(1, "COMPLETE", 0.8, 1.0, "medium; early stopping on val_acc", "medium")
    arms = (ArmResult("choice", CHOICE, (0.8, 0.82), 1.0), ArmResult("none", CHOICE, (0.7, 0.75), 1.0))
    r = FinderResult("val_acc", "max", CHOICE, 1, 0.8, arms, (1, 2), (ladder,), 10.0, 4.0, 2.0)
    first = comparison_table(r).splitlines()[0]
    assert first.endswith("It is the ladder's preset 'medium' as the search ran it, so the comparison has no"
                          " separate preset row.")
    alone = FinderResult("val_acc", "max", CHOICE, 1, 0.8, (), (), (ladder,), 10.0, 4.0, 0.0)
    assert "\n\n\n" not in comparison_table(alone)
