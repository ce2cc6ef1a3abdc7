"""Drop-path in transformer blocks found by type: torchvision's ViT ``EncoderBlock`` and torch's
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``, whose residual additions live inside
``forward`` and end two or three branches each.

The reference is each block's forward written out by hand from its own submodules (on a copy taken
before the surgery), with ``torchvision.ops.stochastic_depth`` on every branch in the order the block
computes them; ``DropPath`` draws the numbers torchvision draws, so the same seed gives equal outputs.
Dropout is built at 0, which draws no random numbers in training mode.
"""

from __future__ import annotations

import copy
import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer
from torchvision.ops import stochastic_depth

from lightning_reg.presets import PresetStochasticDepth
from lightning_reg.stochastic_depth.layers import DropPath, add_stochastic_depth, find_drop_rate_modules
from tests.helpers import fast_trainer
from tests.presets.test_generality import NOTE_LOGGER, Flat


def _sd(x: torch.Tensor, p: float) -> torch.Tensor:
    return stochastic_depth(x, p, "row", training=True)


def _vit(layers: int = 3) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=8, patch_size=4, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )


def _reference_vit_block(block: nn.Module, x: torch.Tensor, p: float) -> torch.Tensor:
    """torchvision's EncoderBlock.forward, with stochastic depth on the attention and the MLP branch."""
    h = block.ln_1(x)
    h, _ = block.self_attention(h, h, h, need_weights=False)
    x = x + _sd(block.dropout(h), p)
    return x + _sd(block.mlp(block.ln_2(x)), p)


def test_vit_encoder_blocks_get_drop_path_on_both_branches_at_the_block_rate():
    model = _vit(3)
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    x = torch.randn(5, 3, 8, 8)
    before = model.eval()(x)

    layers = add_stochastic_depth(model, 0.3)  # linear rule over 3 blocks: 0, 0.15, 0.3

    assert [m.p for m in layers] == pytest.approx([0.0, 0.0, 0.15, 0.15, 0.3, 0.3])
    assert [f.level for f in find_drop_rate_modules(model)] == [0, 0, 1, 1, 2, 2]
    assert list(model.state_dict()) == keys
    assert torch.equal(model.eval()(x), before)  # eval: untouched, bitwise

    tokens = torch.randn(64, 5, 16)
    block, ref_block = model.encoder.layers[2].train(), reference.encoder.layers[2].train()
    torch.manual_seed(3)
    out = block(tokens)
    torch.manual_seed(3)
    assert torch.equal(out, _reference_vit_block(ref_block, tokens, 0.3))
    torch.manual_seed(3)
    assert not torch.equal(out, _reference_vit_block(ref_block, tokens, 0.0))  # some rows were dropped


def _reference_encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, p: float) -> torch.Tensor:
    def attention(h: torch.Tensor) -> torch.Tensor:
        return layer.self_attn(h, h, h, need_weights=False)[0]

    def feed_forward(h: torch.Tensor) -> torch.Tensor:
        return layer.linear2(layer.activation(layer.linear1(h)))

    if layer.norm_first:
        x = x + _sd(attention(layer.norm1(x)), p)
        return x + _sd(feed_forward(layer.norm2(x)), p)
    x = layer.norm1(x + _sd(attention(x), p))
    return layer.norm2(x + _sd(feed_forward(x), p))


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_encoder_layers_get_drop_path_on_both_branches(norm_first: bool):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    reference = copy.deepcopy(encoder)
    layers = add_stochastic_depth(encoder, 0.4)

    assert [m.p for m in layers] == pytest.approx([0.0, 0.0, 0.4, 0.4])
    assert [f.name for f in find_drop_rate_modules(encoder)][:2] == [
        "layers.0.dropout1.drop_path",
        "layers.0.dropout2.drop_path",
    ]
    x = torch.randn(48, 6, 16)
    torch.manual_seed(5)
    out = encoder.layers[1].train()(x)
    torch.manual_seed(5)
    assert torch.equal(out, _reference_encoder_layer(reference.layers[1].train(), x, 0.4))
    encoder.eval(), reference.eval()
    with torch.no_grad():  # eval (torch's fast path included) is untouched
        assert torch.allclose(encoder(x), reference(x), atol=1e-6)


def test_torch_decoder_layers_get_drop_path_on_three_branches():
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer)
    (a, b, c) = add_stochastic_depth(nn.ModuleList([layer]), 0.2, rule="uniform")
    assert (a.p, b.p, c.p) == (0.2, 0.2, 0.2)
    x, memory = torch.randn(40, 4, 16), torch.randn(40, 3, 16)
    torch.manual_seed(9)
    out = layer.train()(x, memory)
    torch.manual_seed(9)
    r = reference.train()
    h = r.norm1(x + _sd(r.self_attn(x, x, x, need_weights=False)[0], 0.2))
    h = r.norm2(h + _sd(r.multihead_attn(h, memory, memory, need_weights=False)[0], 0.2))
    expected = r.norm3(h + _sd(r.linear2(r.activation(r.linear1(h))), 0.2))
    assert torch.equal(out, expected)


def test_a_sequence_first_transformer_layer_is_refused_not_dropped_along_the_wrong_dimension():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=False)
    match = r"Block '0' \(TransformerEncoderLayer\) was built with batch_first=False"
    with pytest.raises(ValueError, match=match):
        add_stochastic_depth(nn.Sequential(layer), 0.1)
    assert not any(isinstance(m, DropPath) for m in layer.modules())


def test_branch_ends_take_a_tuple_of_names_for_a_block_with_several_branches():
    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.a(x)
            return x + self.b(x)

    net = nn.Sequential(TwoBranch(), TwoBranch())
    layers = add_stochastic_depth(net, 0.2, branch_ends={TwoBranch: ("a", "b")})
    assert [m.p for m in layers] == pytest.approx([0.0, 0.0, 0.2, 0.2])
    for bad in ((), ("a", 3), ["a"]):
        with pytest.raises(TypeError, match="tuple of names, one per branch"):
            add_stochastic_depth(net, 0.2, branch_ends={TwoBranch: bad})  # type: ignore[dict-item]


class _ViTModule(Flat):
    def __init__(self) -> None:
        super().__init__(_vit(2))

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 1.0)


def test_a_preset_gives_a_torchvision_vit_drop_path_and_leaves_its_dropout_alone(caplog):
    images = torch.randn(16, 3, 8, 8)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 3, (16,))), batch_size=8)
    model = _ViTModule()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    sd = PresetStochasticDepth(0.2, dropout_rate=0.4, preset_name="strong")
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(model, loader, loader)
    assert not sd.dropout_instead and not sd.skipped
    assert all(m.p == 0.0 for m in dropouts)  # the stand-in did not touch them
    assert not any("stand in for drop-path" in r.getMessage() for r in caplog.records)
    # the DropPath modules stay (checkpoints keep loading) but go back to rate 0 when the fit ends, as the
    # model was: a later fit without the preset trains the model as built
    assert [f.module.p for f in find_drop_rate_modules(model)] == [0.0] * 4

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen = [round(f.module.p, 6) for f in find_drop_rate_modules(pl_module)]

    rates = Rates()  # a second fit with the preset gets the same rates again
    again = fast_trainer(max_epochs=1, callbacks=[PresetStochasticDepth(0.2, verbose=0), rates])
    again.fit(model, loader, loader)
    assert rates.seen == [0.0, 0.0, 0.2, 0.2]
    assert sum(isinstance(m, DropPath) for m in model.modules()) == 4


def test_a_preset_skips_drop_path_for_sequence_first_layers_with_a_note_and_uses_the_stand_in(caplog):
    class SeqFirst(Flat):
        def __init__(self) -> None:
            super().__init__(nn.Linear(6, 3))
            self.layer = nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=False)

        def forward(self, x):
            return self.body(self.layer(x.unsqueeze(0)).squeeze(0))

    sd = PresetStochasticDepth(0.2, dropout_rate=0.3, preset_name="strong")
    model = SeqFirst()
    loader = DataLoader(TensorDataset(torch.randn(16, 6), torch.randint(0, 3, (16,))), batch_size=8)
    with caplog.at_level(logging.INFO, logger=NOTE_LOGGER):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(model, loader, loader)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "torch transformer layers ['layer'] were built with batch_first=False" in said
    assert "no residual block drop-path can use in SeqFirst, so its 3 dropout modules stand in" in said
    assert sd.dropout_instead and not any(isinstance(m, DropPath) for m in model.modules())


def test_a_branch_ends_class_name_the_model_does_not_have_is_an_error_with_a_suggestion():
    images = torch.randn(8, 3, 8, 8)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 3, (8,))), batch_size=8)
    sd = PresetStochasticDepth(0.2, branch_ends={"EncoderBlok": "dropout"}, verbose=0)
    match = "_ViTModule has no module of class 'EncoderBlok'; did you mean 'EncoderBlock'"
    with pytest.raises(ValueError, match=match):
        fast_trainer(max_epochs=1, callbacks=[sd]).fit(_ViTModule(), loader, loader)


def test_hugging_face_bert_layers_take_drop_path_through_branch_ends():
    modeling = pytest.importorskip("transformers.models.bert.modeling_bert")
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(config)
    reference = copy.deepcopy(model)
    ends = {modeling.BertLayer: ("attention.output.dropout", "output.dropout")}  # the docs' advice
    layers = add_stochastic_depth(model, 0.3, branch_ends=ends)
    # two residual branches per layer, one depth level per layer: linear rule over the 2 layers
    assert [m.p for m in layers] == pytest.approx([0.0, 0.0, 0.3, 0.3])
    assert [f.level for f in find_drop_rate_modules(model)] == [0, 0, 1, 1]

    block, ref = model.encoder.layer[1].output.train(), reference.encoder.layer[1].output.train()
    h, skip = torch.randn(32, 5, 32), torch.randn(32, 5, 16)
    torch.manual_seed(2)
    out = block(h, skip)
    torch.manual_seed(2)
    assert torch.equal(out, ref.LayerNorm(_sd(ref.dense(h), 0.3) + skip))



def test_several_branch_ends_travel_through_the_preset_config_fragment():
    import yaml

    from lightning_reg.presets import preset_config

    text = preset_config("mild", branch_ends={"TwoBranchBlock": ("attn_out", "mlp_out")})
    callbacks = yaml.safe_load(text)["trainer"]["callbacks"]
    (sd,) = [c for c in callbacks if c["class_path"].endswith("PresetStochasticDepth")]
    assert sd["init_args"]["branch_ends"] == {"TwoBranchBlock": ["attn_out", "mlp_out"]}
    built = PresetStochasticDepth(0.1, branch_ends=sd["init_args"]["branch_ends"])  # what LightningCLI does
    assert built.branch_ends == {"TwoBranchBlock": ("attn_out", "mlp_out")}
    with pytest.raises(TypeError, match=r"or a list of names \(one per branch\); got 'B': \['a', 3\]"):
        PresetStochasticDepth(0.1, branch_ends={"B": ["a", 3]})
