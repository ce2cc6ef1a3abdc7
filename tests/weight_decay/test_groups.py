"""Tests for lightning_reg.weight_decay.groups (pure PyTorch; no Trainer).

Every expected no-decay set below is written by hand from the model's architecture (names), independently
of the library's module-type rules.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from lightning_reg import DecayRule, weight_decay_param_groups
from lightning_reg._shared.names import strip_wrapper_prefixes
from lightning_reg.weight_decay import describe_param_groups, no_weight_decay_names
from lightning_reg.weight_decay.groups import block_layer_ids, validate_param_groups

# --------------------------------------------------------------------------------------------- models


class LlamaRMSNorm(nn.Module):  # a third-party norm recognised only by its class name
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Normalize(nn.Module):  # "Norm" followed by lower case: NOT a norm
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.rms = LlamaRMSNorm(4)
        self.nrm = Normalize(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = LlamaRMSNorm(d)
        self.up = nn.Linear(d, 2 * d, bias=False)
        self.down = nn.Linear(2 * d, d, bias=False)


class TinyLM(nn.Module):
    """Decoder-style transformer: nn.RMSNorm, a Llama-style RMSNorm, tied input/output embeddings."""

    def __init__(self, vocab: int = 50, d: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.tok.weight  # tied


def _names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    from torchvision.models import convnext_tiny, resnet18, swin_t
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.device("meta"):  # classification needs no values: skip the (slow) random init
        return {
            "resnet18": resnet18(),
            "convnext_tiny": convnext_tiny(),
            "swin_t": swin_t(),
            "vit": VisionTransformer(
                image_size=32,
                patch_size=8,
                num_layers=2,
                num_heads=2,
                hidden_dim=32,
                mlp_dim=64,
                num_classes=10,
            ),
        }


# Hand-written expectations (by parameter name): which parameters are normalization or bias parameters.
def _expected_no_decay(key: str, names: list[str], embeddings: bool = False) -> set[str]:
    bias = {n for n in names if n.endswith(".bias") or n.endswith("in_proj_bias")}
    if key == "resnet18":  # every BatchNorm: bn1, layerX.Y.bnZ, layerX.Y.downsample.1
        norm = {n for n in names if re.search(r"(^|\.)bn\d\.|downsample\.1\.", n)}
    elif (
        key == "convnext_tiny"
    ):  # stem LayerNorm2d, block LayerNorm, downsample LayerNorm2d, head LayerNorm2d; per-channel layer_scale
        norm = {n for n in names if n.endswith(".layer_scale")} | {
            n
            for n in names
            if re.match(
                r"features\.0\.1\.|features\.\d\.\d+\.block\.2\.|features\.[246]\.0\.|classifier\.0\.", n
            )
        }
    elif key == "swin_t":  # stem LayerNorm, norm1/norm2 in blocks, PatchMerging norm, final norm; bias tables
        norm = {n for n in names if re.match(r"features\.0\.2\.|.*\.norm[12]?\.|norm\.", n)}
        norm |= {n for n in names if n.endswith("relative_position_bias_table")}
    elif key == "vit":  # ln_1 / ln_2 per encoder block, final encoder.ln
        norm = {n for n in names if re.search(r"\.ln(_[12])?\.", n)}
    else:
        raise KeyError(key)
    emb = set()
    if embeddings:
        emb = {
            n for n in names if n.endswith(("class_token", "pos_embedding", "relative_position_bias_table"))
        }
    return bias | norm | emb


@pytest.mark.parametrize("key", ["resnet18", "convnext_tiny", "swin_t", "vit"])
def test_torchvision_parity_with_hand_classification(tv_models, key):
    model = tv_models[key]
    names = _names(model)
    expected = _expected_no_decay(key, names)
    assert no_weight_decay_names(model) == expected
    with_embeddings = no_weight_decay_names(model, rule=DecayRule(embeddings=True))
    assert with_embeddings == _expected_no_decay(key, names, True)
    groups = weight_decay_param_groups(model, 0.05)
    assert sorted(groups[0]["param_names"]) == sorted(set(names) - expected)
    assert sorted(groups[1]["param_names"]) == sorted(expected)
    # every trainable parameter exactly once, same tensors
    assert sum(len(g["params"]) for g in groups) == len(names)
    validate_param_groups(groups, model)


def test_rmsnorm_transformer_with_tied_embeddings():
    model = TinyLM()
    names = _names(model)  # named_parameters lists the tied weight once, as tok.weight
    assert "lm_head.weight" not in names and model.lm_head.weight is model.tok.weight
    norms = {n for n in names if re.search(r"norm\d?\.weight$", n)}
    assert len(norms) == 3 * 2 + 1
    assert no_weight_decay_names(model) == norms
    # embeddings excluded: the tied weight leaves the decayed group, once
    assert no_weight_decay_names(model, rule=DecayRule(embeddings=True)) == norms | {"tok.weight"}
    groups = weight_decay_param_groups(model, 0.1, rule=DecayRule(embeddings=True))
    flat = [id(p) for g in groups for p in g["params"]]
    assert len(flat) == len(set(flat)) == len(names)
    assert "tok.weight" in groups[1]["param_names"]
    opt = torch.optim.AdamW(groups, lr=1e-3)  # torch accepts the groups (incl. param_names)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]


def test_norm_class_name_rule():
    from lightning_reg.weight_decay.groups import is_norm_module

    def named(cls_name: str) -> nn.Module:
        return type(cls_name, (nn.Module,), {})()

    yes = ("LlamaRMSNorm", "T5LayerNorm", "LayerNorm2d", "BatchNormAct2d", "RmsNorm", "LayerNormFp32",
           # names the old suffix rule missed: gated RMSNorms, timm EvoNorm / FilterResponseNorm variants
           "MambaRMSNormGated", "Qwen3NextRMSNormGated", "EvoNorm2dB0", "EvoNorm2dS0a",
           "FilterResponseNormTlu2d", "NemotronLayerNorm1P", "GroupNormAct")
    for name in yes:
        assert is_norm_module(named(name)), name
    for name in ("Normalize", "NormalizedLinear", "Linear", "Norman"):
        assert not is_norm_module(named(name)), name

    # a class named like a norm that holds layers is a block, not a norm: its own parameters are decayed
    class PreNormBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 4)
            self.gate = nn.Parameter(torch.ones(4, 4))

    assert not is_norm_module(PreNormBlock())
    assert no_weight_decay_names(PreNormBlock()) == {"norm.weight", "norm.bias", "fc.bias"}
    assert is_norm_module(nn.SyncBatchNorm(2)) and is_norm_module(nn.InstanceNorm1d(2, affine=True))
    assert is_norm_module(nn.LocalResponseNorm(2)) and is_norm_module(nn.GroupNorm(1, 2))


def test_tiny_classification_frozen_and_name_rule():
    m = Tiny()
    assert no_weight_decay_names(m) == {"fc.bias", "bn.weight", "bn.bias", "rms.weight"}
    groups = weight_decay_param_groups(m, 0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["param_names"] == ["fc.weight", "nrm.weight"]  # Normalize is not a norm; frozen left out
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(p is m.get_parameter(n) for g in groups for p, n in zip(g["params"], g["param_names"]))
    # switches
    assert no_weight_decay_names(m, DecayRule(bias=False)) == {"bn.weight", "bn.bias", "rms.weight"}
    assert no_weight_decay_names(m, DecayRule(norm=False)) == {"fc.bias", "bn.bias"}
    assert no_weight_decay_names(m, DecayRule(exclude=["nrm.*"])) == {
        "fc.bias",
        "bn.weight",
        "bn.bias",
        "rms.weight",
        "nrm.weight",
    }
    # empty groups are dropped
    only_bias = nn.Linear(2, 2)
    only_bias.weight.requires_grad_(False)
    assert [g["name"] for g in weight_decay_param_groups(only_bias, 0.1)] == ["no_decay"]


def test_declared_no_weight_decay_is_relative_to_the_declaring_submodule():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.temperature = nn.Parameter(torch.ones(()))
            self.proj = nn.Linear(8, 8, bias=False)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed", "temp*"}

    outer = nn.Sequential(nn.Linear(8, 8, bias=False), Inner())
    assert no_weight_decay_names(outer) == {"1.pos_embed", "1.temperature"}


# ------------------------------------------------------------------------------ wrappers (FSDP-style)


class _Wrap(nn.Module):
    def __init__(self, attr: str, inner: nn.Module) -> None:
        super().__init__()
        setattr(self, attr, inner)


def _fsdp_like(model: nn.Module) -> nn.Module:
    """Mimic FSDP(use_orig_params=True) + activation checkpointing + DDP: wrapper name components and
    every parameter flattened to a 1-D tensor (as FSDP shards are)."""
    for module in list(model.modules()):
        for pname, p in list(module.named_parameters(recurse=False)):
            flat = nn.Parameter(p.detach().reshape(-1), requires_grad=p.requires_grad)
            setattr(module, pname, flat)
    if isinstance(model, TinyLM):
        model.lm_head.weight = model.tok.weight  # re-tie after flattening
        for i, blk in enumerate(list(model.blocks)):
            model.blocks[i] = _Wrap("_fsdp_wrapped_module", _Wrap("_checkpoint_wrapped_module", blk))
    outer = _Wrap("_fsdp_wrapped_module", model)
    return _Wrap("module", _Wrap("_orig_mod", outer))


@pytest.mark.parametrize("factory", [TinyLM, Tiny])
def test_fsdp_style_names_and_flat_params_classify_identically(factory):
    torch.manual_seed(0)
    plain = factory()
    wrapped = _fsdp_like(factory())
    raw = _names(wrapped)
    assert any("_fsdp_wrapped_module" in n for n in raw) and all(p.ndim == 1 for p in wrapped.parameters())
    assert no_weight_decay_names(wrapped) == no_weight_decay_names(plain)
    for emb in (False, True):
        a = weight_decay_param_groups(plain, 0.1, rule=DecayRule(embeddings=emb))
        b = weight_decay_param_groups(wrapped, 0.1, rule=DecayRule(embeddings=emb))
        assert [(g["name"], g["param_names"]) for g in a] == [(g["name"], g["param_names"]) for g in b]


def test_fsdp_flat_parameter_is_rejected_with_a_hint():
    m = nn.Module()
    m._flat_param = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="use_orig_params=True"):
        weight_decay_param_groups(m, 0.1)


def test_strip_wrapper_prefixes():
    name = "module._fsdp_wrapped_module.a._checkpoint_wrapped_module.b.bias"
    assert strip_wrapper_prefixes(name) == "a.b.bias"
    assert strip_wrapper_prefixes("_orig_mod.enc.module.weight") == "enc.module.weight"  # inner `module` kept


# ------------------------------------------------------------------------------------------------- timm


def test_differences_from_timm_param_groups_weight_decay():
    """timm's rule is `ndim <= 1 or name.endswith('.bias') or name in no_weight_decay_list`.

    Where the rules differ (also listed in docs/techniques/weight-decay.md):
    1. LayerScale gammas: both exclude them (timm by ndim, ours as per-channel scales).
    2. Declared no_weight_decay() names (cls_token, pos_embed): timm's function decays them unless the
       caller passes the list (timm's create_optimizer does, for the top-level model only); ours reads
       no_weight_decay() of every submodule automatically.
    3. Flattened (FSDP) parameters: timm's ndim rule puts every parameter in no decay; ours is unchanged.
    On torchvision resnet18/vit the two agree; on convnext/swin see the test below.
    """
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim import param_groups_weight_decay

    def timm_no_decay(model: nn.Module, **kw) -> set[str]:
        ids = {
            id(p)
            for g in param_groups_weight_decay(model, 0.05, **kw)
            if g["weight_decay"] == 0
            for p in g["params"]
        }
        return {n for n, p in model.named_parameters() if id(p) in ids}

    with torch.device("meta"):
        vit = VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, num_classes=10
        )
    ours, theirs = no_weight_decay_names(vit), timm_no_decay(vit)
    assert theirs - ours == set()  # LayerScale gammas excluded by both
    assert {f"blocks.{i}.ls{j}.gamma" for i in range(2) for j in (1, 2)} <= ours
    assert ours - theirs == {"cls_token", "pos_embed"}
    theirs_declared = timm_no_decay(vit, no_weight_decay_list=list(vit.no_weight_decay()))
    assert theirs_declared - ours == theirs - ours and ours - theirs_declared == set()

    scalar = nn.Module()
    scalar.temperature = nn.Parameter(torch.ones(()))  # 0-dim: timm no decay (ndim rule), ours decayed
    assert timm_no_decay(scalar) == {"temperature"} and no_weight_decay_names(scalar) == set()

    flat = _fsdp_like(TinyLM())
    assert timm_no_decay(flat) == set(_names(flat))  # everything, incl. the embedding and every Linear
    assert no_weight_decay_names(flat) == no_weight_decay_names(TinyLM())


def test_agrees_with_timm_on_torchvision_models(tv_models):
    """timm's ndim rule decays the (C, 1, 1) layer scales of ConvNeXt and Swin's 2-D bias tables; ours
    excludes both (per-channel scales; additive attention biases, as timm's own Swin declares)."""
    from timm.optim import param_groups_weight_decay

    for key, model in tv_models.items():
        ids = {
            id(p)
            for g in param_groups_weight_decay(model, 0.05)
            if g["weight_decay"] == 0
            for p in g["params"]
        }
        theirs = {n for n, p in model.named_parameters() if id(p) in ids}
        ours = no_weight_decay_names(model)
        assert theirs <= ours, key
        extra = {n.rsplit(".", 1)[-1] for n in ours - theirs}
        assert extra == {"resnet18": set(), "vit": set(), "convnext_tiny": {"layer_scale"},
                         "swin_t": {"relative_position_bias_table"}}[key], key


# ------------------------------------------------------------------------------------------ layer decay


def test_layer_decay_lrs_by_hand():
    stem, head = nn.Linear(2, 2), nn.Linear(2, 1)
    blocks = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2))  # LayerNorm is a block too
    model = nn.ModuleDict({"stem": stem, "blocks": blocks, "head": head})
    groups = weight_decay_param_groups(model, 0.1, layer_decay=0.5, lr=1.0)
    # L = 5 (stem, 3 blocks, head): lr_i = 0.5 ** (4 - i)
    by_name = {g["name"]: g for g in groups}
    assert by_name["layer_0_decay"]["param_names"] == ["stem.weight"]
    assert by_name["layer_0_no_decay"]["param_names"] == ["stem.bias"]
    assert "layer_2_decay" not in by_name and by_name["layer_2_no_decay"]["param_names"] == [
        "blocks.1.weight",
        "blocks.1.bias",
    ]
    expected_lr = {0: 0.0625, 1: 0.125, 2: 0.25, 3: 0.5, 4: 1.0}
    for g in groups:
        assert g["lr"] == g["initial_lr"] == expected_lr[g["layer_id"]]
        assert g["lr_scale"] == expected_lr[g["layer_id"]]
        assert g["weight_decay"] == (
            0.1 if g["name"].endswith("_decay") and "no_decay" not in g["name"] else 0.0
        )
    # a standard scheduler scales each group's real lr (it ignores lr_scale)
    opt = torch.optim.SGD(groups, lr=123.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [0.1 * expected_lr[g["layer_id"]] for g in groups]
    )
    del sched
    # custom layer ids and num_layers
    groups = weight_decay_param_groups(
        model, 0.1, layer_decay=0.5, lr=2.0, layer_id_fn=lambda n: 0, num_layers=3
    )
    assert {g["lr"] for g in groups} == {0.5}
    with pytest.raises(ValueError, match="Layer id 7"):
        weight_decay_param_groups(model, 0.1, layer_decay=0.5, lr=1.0, layer_id_fn=lambda n: 7, num_layers=3)


def test_block_layer_ids_torchvision_vit_follows_beit(tv_models):
    ids = block_layer_ids(tv_models["vit"])
    assert ids["class_token"] == ids["conv_proj.weight"] == ids["encoder.pos_embedding"] == 0
    assert ids["encoder.layers.encoder_layer_0.ln_1.weight"] == 1
    assert ids["encoder.layers.encoder_layer_1.mlp.3.bias"] == 2
    assert ids["encoder.ln.weight"] == ids["heads.head.weight"] == 3


# --------------------------------------------------------------------------------------------- bad input


def test_bad_values_name_the_value():
    m = nn.Linear(2, 2)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            weight_decay_param_groups(m, bad)
    with pytest.raises(TypeError, match=r"`weight_decay` must be a finite number >= 0; got '0.1' of type"):
        weight_decay_param_groups(m, "0.1")
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=rf"\(0, 1\].*{bad}"):
            weight_decay_param_groups(m, 0.1, layer_decay=bad, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        weight_decay_param_groups(m, 0.1, layer_decay=0.5)
    with pytest.raises(ValueError, match=r"'weight' is in two groups: 'a' and 'b'"):
        groups = [{"name": "a", "params": [m.weight]}, {"name": "b", "params": [m.weight, m.bias]}]
        validate_param_groups(groups, m)
    with pytest.raises(ValueError, match=r"in no group: \['bias'\]"):
        validate_param_groups([{"name": "a", "params": [m.weight]}], m)


def test_unmatched_exclude_pattern_warns_once_naming_it():
    m = nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        groups = weight_decay_param_groups(m, 0.1, rule=DecayRule(exclude=["nothing*", "weight"]))
    msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "nothing*" in msgs[0] and "'weight'" not in msgs[0]
    assert [g["name"] for g in groups] == ["no_decay"]


def test_describe_lists_every_group():
    m = Tiny()
    text = describe_param_groups(weight_decay_param_groups(m, 0.1, lr=0.01))
    lines = text.splitlines()
    assert lines[0].split() == ["group", "tensors", "params", "weight_decay", "lr"]
    assert lines[1].split() == ["decay", "2", "20", "0.1", "0.01"]  # fc.weight 16 + nrm.weight 4
    assert lines[2].split() == ["no_decay", "4", "16", "0", "0.01"]  # fc.bias, bn.weight, bn.bias, rms.weight
    assert lines[3].split() == ["total", "6", "36"]


# ------------------------------------------------------------------------- models nobody here wrote


def test_rnn_biases_gated_norms_and_learned_tokens_by_hand():
    class RMSNormGated(nn.Module):  # the shape of transformers' *RMSNormGated classes
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8, num_layers=2, bidirectional=True)
            self.gru = nn.GRU(4, 8)
            self.norm = RMSNormGated(8)
            self.class_embedding = nn.Parameter(torch.zeros(8))
            self.distillation_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.register_tokens = nn.Parameter(torch.zeros(1, 4, 8))
            self.head = nn.Linear(8, 2)

    m = Model()
    biases = {n for n, _ in m.named_parameters() if n.split(".")[-1].startswith("bias")}
    assert len(biases) == 2 * 2 * 2 + 2 + 1  # LSTM: 2 layers x 2 directions x (ih, hh); GRU (ih, hh); head
    assert any(n.endswith("_reverse") for n in biases)
    assert no_weight_decay_names(m) == biases | {"norm.weight"}
    tokens = {"class_embedding", "distillation_token", "register_tokens"}
    assert no_weight_decay_names(m, DecayRule(embeddings=True)) == biases | {"norm.weight"} | tokens


def test_a_submodule_named_module_next_to_own_parameters_keeps_unique_names():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.weight = nn.Parameter(torch.ones(2, 2))

    m = Model()
    groups = weight_decay_param_groups(m, 0.1)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == ["module.bias", "module.weight", "weight"]  # no two parameters called 'weight'
    for g in groups:
        assert all(p is m.get_parameter(n) for p, n in zip(g["params"], g["param_names"]))
    # a real wrapper (one child called `module`, no parameters of its own) is still stripped
    wrapped = _Wrap("module", Model())
    wrapped_groups = weight_decay_param_groups(wrapped, 0.1)
    assert [g["param_names"] for g in wrapped_groups] == [g["param_names"] for g in groups]
    # user patterns may use either spelling
    assert "module.weight" in no_weight_decay_names(wrapped, DecayRule(exclude=["module.module.weight"]))


def test_no_weight_decay_attribute_and_exclude_selector_syntax():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    m[1].weight._no_weight_decay = True  # the mamba_ssm convention
    assert no_weight_decay_names(m) == {"0.bias", "1.bias", "2.bias", "1.weight"}
    for patterns in (["2"], ["2.*"], ["re:^2\\."], ["*.weight"]):
        got = no_weight_decay_names(m, DecayRule(exclude=patterns))
        assert "2.weight" in got and (("0.weight" in got) == (patterns == ["*.weight"])), patterns
    with pytest.raises(ValueError, match="looks like a regular expression"):
        DecayRule(exclude=["^2"])
