"""Tests for lightning_reg.param_groups (pure PyTorch; no Trainer)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_reg import describe_param_groups, no_weight_decay_names, weight_decay_param_groups
from lightning_reg.param_groups import strip_wrapper_prefixes, validate_param_groups


class LlamaRMSNorm(nn.Module):  # a third-party norm recognised only by its class name
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Normalize(nn.Module):  # "Norm" followed by lower case: NOT a norm
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.rms = LlamaRMSNorm(4)
        self.nrm = Normalize(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_tiny_classification_by_hand():
    m = Tiny()
    assert no_weight_decay_names(m) == {"fc.bias", "bn.weight", "bn.bias", "rms.weight"}
    groups = weight_decay_param_groups(m, 0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["param_names"] == ["fc.weight", "nrm.scale"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(p is m.get_parameter(n) for g in groups for p, n in zip(g["params"], g["param_names"]))


def test_strip_wrapper_prefixes():
    name = "module._fsdp_wrapped_module.a._checkpoint_wrapped_module.b.bias"
    assert strip_wrapper_prefixes(name) == "a.b.bias"
    assert strip_wrapper_prefixes("_orig_mod.enc.module.weight") == "enc.module.weight"  # inner `module` kept


def test_bad_values_name_the_value():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"-0\.1"):
        weight_decay_param_groups(m, -0.1)
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=rf"\(0, 1\].*{bad}"):
            weight_decay_param_groups(m, 0.1, layer_decay=bad, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        weight_decay_param_groups(m, 0.1, layer_decay=0.5)
    with pytest.raises(ValueError, match=r"'weight' is in two groups: 'a' and 'b'"):
        groups = [{"name": "a", "params": [m.weight]}, {"name": "b", "params": [m.weight, m.bias]}]
        validate_param_groups(groups, m)


def test_unmatched_exclude_pattern_warns_once_naming_it():
    m = nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        weight_decay_param_groups(m, 0.1, exclude=["nothing*", "weight"])
    msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "nothing*" in msgs[0] and "'weight'" not in msgs[0]


def test_describe_lists_every_group():
    m = Tiny()
    text = describe_param_groups(weight_decay_param_groups(m, 0.1, lr=0.01))
    lines = text.splitlines()
    assert lines[0].split() == ["group", "tensors", "params", "weight_decay", "lr"]
    assert lines[1].split() == ["decay", "2", "20", "0.1", "0.01"]
    assert lines[2].split() == ["no_decay", "4", "16", "0", "0.01"]
    assert lines[3].split() == ["total", "6", "36"]
