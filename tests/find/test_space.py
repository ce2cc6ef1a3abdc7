import optuna
import pytest

from lightning_reg import get_preset
from lightning_reg.find.space import (
    Candidate,
    SearchSpace,
    ladder_params,
    no_regularization,
    suggest_candidate,
)
from lightning_reg.presets import PRESET_NAMES


def test_ladder_params_give_back_every_named_preset_as_it_is() -> None:
    # a model without dropout argument: the preset exactly, its dropout stand-in included
    space = SearchSpace(model_args={})
    for name in PRESET_NAMES:
        params = ladder_params(space, name, metric="val_acc", mode="max", stand_in=True)
        c = suggest_candidate(optuna.trial.FixedTrial(params), space, metric="val_acc", mode="max")
        assert c.preset == get_preset(name) and c.overrides() == {}
        assert (c.monitor, c.mode) == ("val_acc", "max")  # the objective's accuracy, as with num_classes
    # a model that takes `dropout`: that argument is searched, and the stand-in is off so it never
    # overwrites it; without residual blocks the ladder puts the preset's stand-in rate into the argument
    space = SearchSpace(model_args={"dropout": (0.0, 0.5)})
    for name in PRESET_NAMES:
        for stand_in, dropout in ((True, get_preset(name).dropout_rate), (False, 0.1)):
            params = ladder_params(space, name, {"dropout": 0.1}, stand_in=stand_in)
            c = suggest_candidate(optuna.trial.FixedTrial(params), space)
            assert c.preset == get_preset(name, dropout_rate=0.0)
            assert dict(c.model_args) == {"dropout": dropout}


def test_a_suggestion_is_a_preset_override_of_the_ladder_step() -> None:
    space = SearchSpace(monitors={"val_loss": "min", "val_acc": "max"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        c = suggest_candidate(trial, space)
        rebuilt = get_preset(c.preset.name, **c.overrides())
        assert rebuilt == c.preset
        assert 1e-4 <= c.preset.weight_decay <= 0.5 and 0 <= c.preset.mixup_prob <= 0.8
        assert c.preset.cutmix_prob == 0.0  # not searched by default, as in the named presets
        assert c.mode == space.monitors[c.monitor]
        assert ("clip_max_norm" in trial.params) == (c.preset.clipping == "norm")
        seen.add(c.preset.clipping)
        study.tell(trial, 0.0)
    assert seen == {"zclip", "norm", "agc", None}


def test_components_set_to_none_keep_the_presets_values() -> None:
    space = SearchSpace(
        presets=("strong",),
        weight_decay=(0.01, 0.02),
        label_smoothing=None,
        mixup_prob=None,
        drop_path_rate=None,
        dropout_rate=None,
        clipping=None,
        patience=None,
        model_args={},
    )
    trial = optuna.create_study().ask()
    c = suggest_candidate(trial, space)
    assert set(trial.params) == {"weight_decay"}
    assert c.preset == get_preset("strong", weight_decay=c.preset.weight_decay)


def test_out_of_range_preset_values_are_clipped_into_the_searched_range() -> None:
    params = ladder_params(SearchSpace(weight_decay=(1e-3, 0.1), patience=(0.1, 0.2)), "strong")
    assert params["weight_decay"] == 0.1 and params["patience"] == 0.2  # clipped into the ranges


def test_no_regularization_turns_everything_off() -> None:
    c = no_regularization(SearchSpace(model_args={"dropout": (0.0, 0.5), "width_noise": (0.1, 0.2)}))
    p = c.preset
    assert (p.weight_decay, p.label_smoothing, p.mixup_prob, p.cutmix_prob, p.drop_path_rate) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert p.clipping is None and not c.early_stopping
    assert dict(c.model_args) == {"dropout": 0.0, "width_noise": 0.1}
    assert "no early stopping" in c.describe()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"presets": ("mild", "extreme")},
            ValueError,
            r"`presets` must be one of 'mild', 'medium', 'strong'",
        ),
        ({"presets": ()}, ValueError, r"at least one"),
        ({"mixup_prob": (0.0, 0.8), "cutmix_prob": (0.0, 0.5)}, ValueError, r"must be <= 1"),
        (
            {"weight_decay": (0.0, 0.1)},
            ValueError,
            r"`weight_decay\[0\]` must be a finite number > 0; got 0.0",
        ),
        ({"label_smoothing": (0.3, 0.1)}, ValueError, r"low <= high; got \(0.3, 0.1\)"),
        ({"label_smoothing": 0.1}, TypeError, r"\(low, high\) pair"),
        (
            {"clipping": ("zclip", "sign")},
            ValueError,
            r"`clipping` must be one of 'zclip', 'norm', 'agc', None",
        ),
        ({"monitors": {"val_acc": "up"}}, ValueError, r"`monitors\['val_acc'\]` must be one of 'min', 'max'"),
        ({"patience": (5, 10)}, TypeError, r"fraction of the planned validation checks.*got \(5, 10\)"),
        ({"patience": (0.2, 1.0)}, ValueError, r"`patience\[1\]`"),
    ],
)
def test_bad_spaces_name_the_value_and_the_choices(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        SearchSpace(**kwargs)


def test_candidate_describe_and_overrides() -> None:
    c = Candidate(
        get_preset("medium", label_smoothing=0.0, patience=7),
        monitor="val_acc",
        mode="max",
        model_args={"dropout": 0.25},
    )
    assert c.overrides() == {"label_smoothing": 0.0, "patience": 7}
    assert (
        c.describe()
        == "medium + label_smoothing=0, patience=7; early stopping on val_acc, patience 7; dropout=0.25"
    )
    fraction = Candidate(get_preset("medium"), monitor="val_acc", mode="max").describe()
    assert fraction == "medium; early stopping on val_acc, patience 0.25 of the checks"
    # the objective's metric first: the ladder's presets watch it, as they watch val_acc with num_classes
    assert list(SearchSpace().monitor_choices("val_acc", "max").items()) == [
        ("val_acc", "max"),
        ("val_loss", "min"),
    ]


def test_bad_candidates_are_refused() -> None:
    with pytest.raises(TypeError, match=r"`preset` must be a Preset \(see get_preset\); got 'mild'"):
        Candidate("mild")
    with pytest.raises(ValueError, match=r"`mode` must be one of 'min', 'max'; got 'up'"):
        Candidate(get_preset("mild"), monitor="val_acc", mode="up")
    with pytest.raises(TypeError, match=r"`model_args\['dropout'\]` must be a finite number"):
        Candidate(get_preset("mild"), model_args={"dropout": "0.1"})
