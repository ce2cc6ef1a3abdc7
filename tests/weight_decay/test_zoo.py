# ruff: noqa: E501  (one table row per family reads better than wrapped rows)
"""The decay rule on models nobody here wrote: Hugging Face ``transformers`` and timm families built from tiny
configs (never downloaded), compared with two independent references.

* The Hugging Face ``Trainer`` rule (``Trainer.get_decay_parameter_names``: ``nn.LayerNorm`` by type, and
  names containing ``bias``, ``layernorm``, ``rmsnorm``, ``norm`` as a component or ``_norm``).
* timm's rule (``param_groups_weight_decay``: ``ndim <= 1``, ``.bias``, plus the model's own
  ``no_weight_decay()`` list, as timm's ``create_optimizer`` passes it).

For every family the differences from each reference are listed by hand below (by the parameter's own
name, or its last two name components for ``weight``/``bias``), each with the reason; the same table is
in ``docs/techniques/weight-decay.md``. Every model is built once per session (timm models on the meta
device: classification needs no values).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_reg import DecayRule, weight_decay_param_groups
from lightning_reg.weight_decay import no_weight_decay_names

T = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

_SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
_TEXT = dict(_SMALL, vocab_size=64)
_IMAGE = dict(_SMALL, image_size=16, patch_size=8)


def _hf(config: str, model: str, **kw) -> Callable[[], nn.Module]:
    return lambda: getattr(T, model)(getattr(T, config)(**kw))


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.device("meta"):
            return timm.create_model(name, num_classes=3, **kw)

    return build


def _clip() -> nn.Module:
    text = dict(_TEXT, max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=dict(_IMAGE), projection_dim=8))


def _rnns() -> nn.Module:
    return nn.ModuleDict(
        {"lstm": nn.LSTM(4, 8, num_layers=2, bidirectional=True), "gru": nn.GRU(4, 8), "rnn": nn.RNN(4, 8)}
    )


_ENC_DEC = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64, d_model=16)

# family -> (kind, builder, vs HF: (ours only, HF only), vs timm: (ours only, timm only), embeddings=True adds)
FAMILIES: dict[str, tuple[str, Callable[[], nn.Module], tuple[set, set], tuple[set, set], set]] = {
    "bert": ("encoder", _hf("BertConfig", "BertForMaskedLM", **_TEXT, max_position_embeddings=32),
             (set(), set()), (set(), set()),
             {"word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"}),
    "gpt2": ("decoder (Conv1D)", _hf("GPT2Config", "GPT2LMHeadModel", n_embd=16, n_layer=2, n_head=2,
                                     vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0),
             (set(), set()), (set(), set()), {"wte.weight", "wpe.weight"}),
    "llama": ("decoder (RMSNorm)", _hf("LlamaConfig", "LlamaForCausalLM", **_TEXT, num_key_value_heads=1),
              (set(), set()), (set(), set()), {"embed_tokens.weight"}),
    # T5's relative_attention_bias is an nn.Embedding of attention biases: a bias table, 2-D for timm
    "t5": ("encoder-decoder", _hf("T5Config", "T5ForConditionalGeneration", d_model=16, d_kv=8, d_ff=32,
                                  num_layers=2, num_heads=2, vocab_size=64),
           (set(), set()), ({"relative_attention_bias.weight"}, set()), {"shared.weight"}),
    "bart": ("encoder-decoder", _hf("BartConfig", "BartForConditionalGeneration", **_ENC_DEC,
                                    max_position_embeddings=32),
             (set(), set()), (set(), set()), {"shared.weight", "embed_positions.weight"}),
    "whisper": ("speech encoder-decoder", _hf("WhisperConfig", "WhisperForConditionalGeneration", **_ENC_DEC,
                                              num_mel_bins=8, max_source_positions=16, max_target_positions=16,
                                              pad_token_id=0, bos_token_id=0, eos_token_id=0,
                                              decoder_start_token_id=0),
                (set(), set()), (set(), set()), {"embed_tokens.weight", "embed_positions.weight"}),
    "vit": ("vision", _hf("ViTConfig", "ViTForImageClassification", **_IMAGE, num_labels=3),
            (set(), set()), (set(), set()), {"cls_token", "position_embeddings"}),
    "deit": ("vision, distillation token", _hf("DeiTConfig", "DeiTForImageClassificationWithTeacher", **_IMAGE,
                                               num_labels=3),
             (set(), set()), (set(), set()), {"cls_token", "distillation_token", "position_embeddings"}),
    # Dinov2LayerScale.lambda1: a per-channel gain (timm: 1-D)
    "dinov2_registers": ("vision, registers, layer scale",
                         _hf("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", **_IMAGE,
                             num_register_tokens=2),
                         ({"lambda1"}, set()), (set(), set()),
                         {"cls_token", "mask_token", "position_embeddings", "register_tokens"}),
    "convnext": ("vision, layer scale", _hf("ConvNextConfig", "ConvNextForImageClassification",
                                            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3),
                 ({"layer_scale_parameter"}, set()), (set(), set()), set()),
    # Swin's relative_position_bias_table: an additive attention bias (2-D: timm's rule decays it, timm's
    # own Swin declares it in no_weight_decay)
    "swin": ("vision, bias table", _hf("SwinConfig", "SwinForImageClassification", image_size=16, patch_size=2,
                                       embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2,
                                       num_labels=3),
             (set(), set()), ({"relative_position_bias_table"}, set()), set()),
    # logit_scale: a learned temperature (OpenCLIP excludes it); class_embedding: a token, 1-D for timm
    "clip": ("CLIP-style", _clip, ({"logit_scale"}, set()), (set(), {"class_embedding"}),
             {"class_embedding", "position_embedding.weight", "token_embedding.weight"}),
    # A_log, D: state-space parameters mamba_ssm marks _no_weight_decay; norm_f: MambaRMSNorm, whose name
    # escapes HF's patterns
    "mamba": ("state-space", _hf("MambaConfig", "MambaForCausalLM", hidden_size=16, num_hidden_layers=2,
                                 vocab_size=64, state_size=4, expand=2),
              ({"A_log", "D", "norm_f.weight"}, set()), ({"A_log"}, set()), {"embeddings.weight"}),
    "mamba2": ("state-space, gated RMSNorm", _hf("Mamba2Config", "Mamba2ForCausalLM", hidden_size=16,
                                                 num_hidden_layers=2, vocab_size=64, state_size=4, expand=2,
                                                 num_heads=4, head_dim=8, n_groups=1),
               ({"A_log", "D", "norm_f.weight"}, set()), (set(), set()), {"embeddings.weight"}),
    "mixtral": ("MoE", _hf("MixtralConfig", "MixtralForCausalLM", **_TEXT, num_key_value_heads=1,
                           num_local_experts=2, num_experts_per_tok=1),
                (set(), set()), (set(), set()), {"embed_tokens.weight"}),
    "qwen3_next": ("MoE, gated delta net, gated RMSNorm",
                   _hf("Qwen3NextConfig", "Qwen3NextForCausalLM", **_TEXT, num_key_value_heads=1, num_experts=2,
                       num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                       linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8,
                       linear_value_head_dim=8, head_dim=8, layer_types=["linear_attention", "full_attention"]),
                   ({"A_log"}, set()), (set(), set()), {"embed_tokens.weight"}),
    "torch_rnns": ("LSTM / GRU / RNN biases", _rnns, (set(), set()), (set(), set()), set()),
    # timm: tokens declared by no_weight_decay(); layer scales (gamma) excluded by timm's ndim rule too
    "timm_vit_layer_scale": ("timm ViT, LayerScale, register tokens",
                             _timm("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=16, num_heads=2,
                                   init_values=1e-5, reg_tokens=2, no_embed_class=True),
                             ({"cls_token", "pos_embed", "reg_token", "gamma"}, set()), (set(), set()), set()),
    "timm_cait": ("timm CaiT, gamma_1/gamma_2", _timm("cait_xxs24_224", img_size=32, depth=1, embed_dim=16,
                                                      num_heads=2),
                  ({"cls_token", "pos_embed", "gamma_1", "gamma_2"}, set()), (set(), set()), set()),
    "timm_beit": ("timm BEiT", _timm("beit_base_patch16_224", img_size=32, depth=1, embed_dim=16, num_heads=2),
                  ({"cls_token", "gamma_1", "gamma_2"}, set()), (set(), set()), set()),
    "timm_eva": ("timm EVA-02", _timm("eva02_tiny_patch14_224", img_size=28, depth=1, embed_dim=16,
                                      num_heads=2),
                 ({"cls_token", "pos_embed"}, set()), (set(), set()), set()),
    "timm_convnext": ("timm ConvNeXt, gamma", _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8)),
                      ({"gamma"}, set()), (set(), set()), set()),
    # MetaFormer: GroupNorm1 named norm1/norm2 escapes HF's names; Scale modules
    "timm_poolformer": ("timm PoolFormer, Scale, GroupNorm1", _timm("poolformer_s12"),
                        ({"norm1.weight", "norm2.weight", "scale"}, set()), (set(), set()), set()),
    "timm_evonorm": ("timm EvoNorm2dS0", _timm("test_efficientnet_evos"),
                     ({"bn1.weight", "bn2.weight", "bn3.weight", "v"}, set()), (set(), set()), set()),
    "timm_frn": ("timm FilterResponseNormTlu2d", _timm("resnetv2_50d_frn"),
                 ({"norm1.weight", "norm2.weight", "norm3.weight", "tau"}, set()), (set(), set()), set()),
    # ResMLP: Affine (alpha, beta of shape (1, 1, C): timm decays them) replaces the norm; ls1/ls2 gains
    "timm_resmlp": ("timm ResMLP, Affine, ls1/ls2", _timm("resmlp_12_224"),
                    ({"alpha", "beta", "ls1", "ls2"}, set()), ({"alpha", "beta"}, set()), set()),
    # NF-ResNet: ScaledStdConv2d.gain (C, 1, 1, 1) is a per-channel gain (timm decays it: 4-D)
    "timm_nfnet": ("timm NF-ResNet, ScaledStdConv2d gain", _timm("nf_resnet26"),
                   ({"gain"}, set()), ({"gain"}, set()), set()),
}


def _short(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        parts = n.split(".")
        out.add(".".join(parts[-2:]) if parts[-1] in ("weight", "bias") else parts[-1])
    return out


def _hf_no_decay(model: nn.Module) -> set[str]:
    decay = set(T.Trainer.get_decay_parameter_names(None, model))
    return {n for n, p in model.named_parameters() if p.requires_grad and n not in decay}


def _timm_no_decay(model: nn.Module) -> set[str]:
    from timm.optim import param_groups_weight_decay

    declared = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=declared)
    ids = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: spec[1]() for name, spec in FAMILIES.items()}


def test_the_zoo_covers_the_families_asked_for():
    kinds = " ".join(spec[0] for spec in FAMILIES.values())
    for kind in ("encoder", "decoder", "encoder-decoder", "vision", "state-space", "MoE", "CLIP-style",
                 "layer scale", "EvoNorm", "FilterResponseNorm", "RNN"):
        assert kind in kinds, kind
    assert sum(not name.startswith(("timm", "torch")) for name in FAMILIES) >= 12


@pytest.mark.parametrize("family", list(FAMILIES))
def test_differences_from_hugging_face_and_timm_are_exactly_the_documented_ones(zoo, family):
    _, _, (ours_not_hf, hf_not_ours), (ours_not_timm, timm_not_ours), with_embeddings = FAMILIES[family]
    model = zoo[family]
    ours = no_weight_decay_names(model)
    hf, tm = _hf_no_decay(model), _timm_no_decay(model)
    assert (_short(ours - hf), _short(hf - ours)) == (ours_not_hf, hf_not_ours)
    assert (_short(ours - tm), _short(tm - ours)) == (ours_not_timm, timm_not_ours)
    added = no_weight_decay_names(model, DecayRule(embeddings=True)) - ours
    assert _short(added) == with_embeddings
    # every weight matrix of a linear map stays decayed: nn.Linear / Conv / HF Conv1D weights, MoE experts
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, T.pytorch_utils.Conv1D)):
            assert f"{name}.weight" not in ours, name
    for name, _ in model.named_parameters():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            assert name not in ours


def test_groups_of_every_family_cover_each_trainable_parameter_once(zoo):
    for family, model in zoo.items():  # timm models live on the meta device: grouping needs no values
        groups = weight_decay_param_groups(model, 0.05)
        listed = [p for g in groups for p in g["params"]]
        assert len(listed) == len({id(p) for p in listed}) == len(
            {id(p) for p in model.parameters() if p.requires_grad}
        ), family
