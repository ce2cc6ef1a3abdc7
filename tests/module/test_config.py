"""RegularizationConfig: one frozen object, validated once; preset < module argument < explicit component."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from functools import partial

import pytest
import torch
from torch import nn

from lightning_reg import BatchMixer, DecayRule, RegularizedModule
from lightning_reg.module import RegularizationConfig
from lightning_reg.module.config import DEFAULT_WEIGHT_DECAY
from lightning_reg.presets.module_side import PresetMixer
from lightning_reg.presets.registry import PRESETS

NOTE_LOGGER = "lightning.pytorch.utilities.rank_zero"


class Net(RegularizedModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def _decayed(optimizer: torch.optim.Optimizer) -> set[float]:
    return {g["weight_decay"] for g in optimizer.param_groups if g["name"] == "decay"}


def test_precedence_preset_then_module_argument_then_explicit_component():
    cfg = RegularizationConfig.resolve(preset="strong", num_classes=5, verbose=0)
    assert cfg.preset == PRESETS["strong"]
    assert (cfg.weight_decay, cfg.weight_decay_source) == (PRESETS["strong"].weight_decay, "preset")
    mixer = cfg.choose_batch_mixer()
    assert isinstance(mixer, PresetMixer) and mixer.label_smoothing == PRESETS["strong"].label_smoothing
    # the module's argument wins over the preset; an explicit component wins over the preset's
    cfg = RegularizationConfig.resolve(preset="strong", num_classes=5, weight_decay=0.0, verbose=0)
    assert (cfg.weight_decay, cfg.weight_decay_source) == (0.0, "module")
    assert cfg.choose_batch_mixer(mixer) is mixer
    # no preset: the optimizer's own bound value, else the library's default
    cfg = RegularizationConfig.resolve(optimizer=partial(torch.optim.SGD, weight_decay=1e-4))
    assert (cfg.weight_decay, cfg.weight_decay_source) == (None, "optimizer")
    cfg = RegularizationConfig.resolve(num_classes=5)
    assert (cfg.preset, cfg.weight_decay, cfg.weight_decay_source) == (None, DEFAULT_WEIGHT_DECAY, "default")
    assert cfg.choose_batch_mixer() is None


def test_the_module_holds_one_frozen_config_validated_once(monkeypatch):
    built = []
    post_init = RegularizationConfig.__post_init__

    def counting(self):
        built.append(self)
        post_init(self)

    monkeypatch.setattr(RegularizationConfig, "__post_init__", counting)
    model = Net(lr=0.1, decay_rule={"exclude": ["body.2"]}, layer_decay=0.5, verbose=0)
    assert len(built) == 1 and model.regularization_config is built[0]
    model.configure_optimizers()  # downstream trusts the config: nothing is validated again
    assert len(built) == 1
    cfg = model.regularization_config
    assert cfg.decay_rule == DecayRule(exclude=["body.2"]) and cfg.layer_decay == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.2  # type: ignore[misc]
    model.lr = 0.2  # the Tuner's path: a validated copy replaces it
    assert model.regularization_config.lr == 0.2 and model.regularization_config.layer_decay == 0.5
    with pytest.raises(ValueError, match=r"`lr` must be a finite number >= 0 or None; got -1\.0"):
        model.lr = -1.0


def test_every_setting_of_the_module_is_a_field_of_the_config():
    """The constructor's settings are the config's fields (the components stay on their mixins)."""
    module_args = set(inspect.signature(RegularizedModule).parameters) - {"args", "kwargs"}
    components = {"weight_penalty", "batch_mixer"}
    fields = {f.name for f in dataclasses.fields(RegularizationConfig)}
    assert module_args - components == fields - {"weight_decay_source"}
    assert set(inspect.signature(RegularizationConfig.resolve).parameters) - {"cls", "owner"} == (
        module_args - components
    )


def test_a_config_whose_weight_decay_contradicts_its_source_is_refused():
    with pytest.raises(ValueError, match=r"None exactly when .*got weight_decay=0\.1 with .*'optimizer'"):
        RegularizationConfig(weight_decay=0.1, weight_decay_source="optimizer")
    other = 0.35
    assert other != PRESETS["mild"].weight_decay
    with pytest.raises(ValueError, match=r"needs the preset's weight decay; got weight_decay=0\.35 .*'mild'"):
        RegularizationConfig(weight_decay=other, weight_decay_source="preset", preset="mild")
    with pytest.raises(ValueError, match=r"`weight_decay_source` must be one of 'module', 'preset'"):
        RegularizationConfig(weight_decay_source="yaml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 2 or None; got 1"):
        RegularizationConfig(num_classes=1)


def test_configure_regularization_weight_decay_is_the_modules_not_the_presets(caplog):
    """With a preset, a weight decay given to configure_regularization used to count as the preset's: an
    optimizer without decoupled weight decay dropped it, with a note blaming the preset."""
    model = Net(preset="mild", num_classes=3, verbose=0)
    assert model.regularization_config.weight_decay_source == "preset"
    model.configure_regularization(optimizer=torch.optim.SGD, lr=0.1, weight_decay=0.3, verbose=0)
    cfg = model.regularization_config
    assert (cfg.weight_decay, cfg.weight_decay_source, cfg.preset) == (0.3, "module", PRESETS["mild"])
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        optimizer = model.configure_optimizers()["optimizer"]
    assert _decayed(optimizer) == {0.3}
    assert not model._preset_weight_decay_skipped
    assert not [r for r in caplog.records if "weight decay skipped" in r.getMessage()]


def test_verbose_0_silences_the_presets_weight_decay_note(caplog):
    for verbose, notes in ((0, 0), (1, 1)):
        caplog.clear()
        model = Net(preset="mild", num_classes=3, optimizer=torch.optim.SGD, verbose=verbose)
        with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
            optimizer = model.configure_optimizers()["optimizer"]
        assert _decayed(optimizer) == {0.0} and model._preset_weight_decay_skipped
        assert sum("weight decay skipped" in r.getMessage() for r in caplog.records) == notes, verbose


def test_an_explicit_mixer_replaces_the_presets():
    mixer = BatchMixer(num_classes=3, mixup_alpha=0.0, label_smoothing=0.3)
    model = Net(preset="strong", num_classes=3, batch_mixer=mixer, verbose=0)
    assert model.batch_mixer is mixer
    assert isinstance(Net(preset="strong", num_classes=3, verbose=0).batch_mixer, PresetMixer)
