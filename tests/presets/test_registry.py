"""Presets as data: contents, overrides, validation, the ladder, the module side (no Trainer)."""

from __future__ import annotations

import inspect
import logging
from collections import Counter

import pytest
import torch

from lightning_reg.presets.module_side import PresetMixer, check_preset_optimizer, preset_mixer
from lightning_reg.presets.registry import (
    PRESET_NAMES,
    PRESETS,
    Preset,
    describe_preset,
    get_preset,
    next_preset,
    overfitting_hint,
)
from lightning_reg.weight_decay.groups import uses_decoupled_weight_decay

NOTE_LOGGER = "lightning.pytorch.utilities.rank_zero"


def test_named_presets_are_ordered_from_weakest_to_strongest():
    assert PRESET_NAMES == ("mild", "medium", "strong")
    ps = [PRESETS[n] for n in PRESET_NAMES]
    for weaker, stronger in zip(ps, ps[1:]):
        assert weaker.weight_decay <= stronger.weight_decay
        assert weaker.label_smoothing <= stronger.label_smoothing
        assert weaker.mixup_prob + weaker.cutmix_prob <= stronger.mixup_prob + stronger.cutmix_prob
        assert weaker.drop_path_rate <= stronger.drop_path_rate
    assert ps[0] != ps[1] != ps[2]
    for p in ps:  # every preset restores the best weights and watches overfitting; each has a summary
        assert p.patience > 0 and p.overfitting_probe is not None and p.summary


def test_overrides_copy_and_validate():
    base = get_preset("medium")
    custom = get_preset("medium", weight_decay=0.01, clipping=None)
    assert (custom.name, custom.weight_decay, custom.clipping) == ("medium", 0.01, None)
    assert base.weight_decay == PRESETS["medium"].weight_decay  # the named preset is untouched
    assert get_preset(custom) is custom
    assert isinstance(Preset("x", weight_decay=1).weight_decay, float)
    with pytest.raises(ValueError, match="`preset` must be one of 'mild', 'medium', 'strong'; got 'hot'"):
        get_preset("hot")
    with pytest.raises(TypeError, match="unknown preset component"):
        get_preset("mild", weigth_decay=0.1)
    with pytest.raises(TypeError, match="`preset` must be one of"):
        get_preset(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a number in \[0, 1\); got 1.0"):
        Preset("x", label_smoothing=1.0)
    with pytest.raises(ValueError, match="must be <= 1"):
        Preset("x", mixup_prob=0.7, cutmix_prob=0.4)
    with pytest.raises(ValueError, match=r"fraction of the planned validation checks, in \(0, 1\); got 2.5"):
        Preset("x", patience=2.5)  # a float is a fraction, an int a count of checks
    with pytest.raises(TypeError, match="`patience` must be an int"):
        Preset("x", patience="20")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`clipping` must be one of"):
        Preset("x", clipping="value")
    with pytest.raises(ValueError, match="`drop_path_schedule` must be one of"):
        Preset("x", drop_path_schedule="late")


def test_next_preset_and_hint_name_the_next_step():
    assert [next_preset(p) for p in (None, "mild", "medium", "strong")] == ["mild", "medium", "strong", None]
    assert next_preset(get_preset("mild", patience=3)) == "medium"  # overridden named preset: same ladder
    assert next_preset(Preset("mine")) is None
    assert "'mild'" in overfitting_hint(None) and "RegularizedModule(preset='mild')" in overfitting_hint(None)
    assert "'medium'" in overfitting_hint("mild") and "'strong'" in overfitting_hint("medium")
    assert "strongest preset" in overfitting_hint("strong")
    # where the ladder ends, or no preset is in use, the hint names the finder
    for current in (None, "strong", Preset("mine")):
        assert "lightning_reg.find.find_regularization" in overfitting_hint(current), current
    assert "find_regularization" not in overfitting_hint("mild")
    assert "custom preset 'mine'" in overfitting_hint(Preset("mine"))


def test_describe_lists_every_component_in_one_line():
    line = describe_preset(
        Preset(
            "x",
            weight_decay=0.1,
            label_smoothing=0.1,
            mixup_prob=0.5,
            cutmix_prob=0.25,
            drop_path_rate=0.2,
            drop_path_schedule="warmup",
            drop_path_warmup=0.1,
            clipping="norm",
            clip_max_norm=2.0,
            patience=7,
        )
    )
    assert "\n" not in line
    for part in (
        "weight decay 0.1",
        "label smoothing 0.1",
        "Mixup p=0.5",
        "CutMix p=0.25",
        "drop-path 0.2",
        "warmup 0.1",
        "clipping norm 2",
        "patience 7 with restore",
        "overfitting monitor",
    ):
        assert part in line, part


def _kinds(mixer: PresetMixer, x: torch.Tensor, n: int) -> Counter:
    return Counter(mixer.sample(x).kind for _ in range(n))


def _within(count: int, n: int, p: float) -> bool:
    sd = (n * p * (1 - p)) ** 0.5
    return abs(count - n * p) <= 5 * sd + 1


def test_mixer_probabilities_per_batch_and_smoothed_targets():
    p = Preset("x", label_smoothing=0.2, mixup_prob=0.3, cutmix_prob=0.2)
    mixer = PresetMixer(4, p, seed=0, verbose=0)
    n = 4000
    kinds = _kinds(mixer, torch.zeros(8, 3, 6, 6), n)
    assert (
        _within(kinds["mixup"], n, 0.3)
        and _within(kinds["cutmix"], n, 0.2)
        and _within(kinds["none"], n, 0.5)
    )
    # an unmixed batch's targets are the hand-worked smoothed one-hot: (1 - eps) * onehot + eps / K
    none = PresetMixer(4, Preset("x", label_smoothing=0.2), seed=0, verbose=0)
    _, y = none(torch.zeros(2, 5), torch.tensor([1, 3]))
    expected = torch.full((2, 4), 0.05)
    expected[0, 1] = expected[1, 3] = 0.85
    assert torch.allclose(y, expected)


def test_cutmix_is_skipped_on_tabular_inputs_with_one_note(caplog):
    p = Preset("strong", mixup_prob=0.4, cutmix_prob=0.4)
    mixer = PresetMixer(3, p, seed=1)
    n = 3000
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        kinds = _kinds(mixer, torch.zeros(8, 30), n)  # would raise in BatchMixer without the check
    notes = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert notes == [
        "preset 'strong': CutMix skipped (inputs of shape (8, 30) have no spatial dimension; "
        "Mixup stays at p=0.4)."
    ]
    assert kinds["cutmix"] == 0 and _within(kinds["mixup"], n, 0.4) and _within(kinds["none"], n, 0.6)
    assert mixer.skipped == ["CutMix"]
    # sequences (B, C, L) keep CutMix
    seq = PresetMixer(3, p, seed=1, verbose=0)
    assert _kinds(seq, torch.zeros(8, 1, 40), 500)["cutmix"] > 0 and seq.skipped == []


def test_mixing_is_skipped_for_integer_inputs_but_smoothing_stays(caplog):
    mixer = PresetMixer(3, Preset("p", label_smoothing=0.3, mixup_prob=0.5, cutmix_prob=0.5), seed=0)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        for _ in range(20):
            x, y = mixer(torch.randint(0, 9, (4, 7)), torch.tensor([0, 1, 2, 0]))
    assert mixer.skipped == ["Mixup", "CutMix"]
    assert sum("Mixup and CutMix skipped" in r.getMessage() for r in caplog.records) == 1
    assert x.dtype == torch.int64 and torch.allclose(y.max(1).values, torch.full((4,), 0.8))


def test_preset_mixer_needs_classes_and_something_to_do(caplog):
    assert preset_mixer(Preset("p", weight_decay=0.1), num_classes=10) is None
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        assert preset_mixer("medium", num_classes=None) is None
    assert any("no num_classes given" in r.getMessage() for r in caplog.records)


def test_weight_decay_only_for_decoupled_optimizers(caplog):
    w = torch.nn.Parameter(torch.zeros(2))

    def groups():
        return [
            {"params": [w], "weight_decay": 0.1},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0},
        ]

    cases = [
        (torch.optim.AdamW(groups()), True),
        (torch.optim.Adam(groups()), False),
        (torch.optim.SGD(groups(), lr=0.1), False),
    ]
    if "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters:  # torch >= 2.6
        cases.append((torch.optim.Adam(groups(), decoupled_weight_decay=True), True))
    for opt, keeps in cases:
        assert uses_decoupled_weight_decay(opt) is keeps
        with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
            assert check_preset_optimizer(opt, PRESETS["mild"]) is keeps
        assert opt.param_groups[0]["weight_decay"] == (0.1 if keeps else 0.0)
    notes = [r.getMessage() for r in caplog.records if "weight decay skipped" in r.getMessage()]
    assert len(notes) == 2 and "SGD adds weight decay to the gradient" in notes[1]
