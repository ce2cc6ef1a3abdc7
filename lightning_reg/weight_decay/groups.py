"""Which parameters get weight decay, layer-wise learning-rate decay, and a readable report of the groups.

Pure PyTorch: nothing here needs Lightning. Parameters are classified by the type of the module that owns
them and by their own (last) name, never by ``ndim``: FSDP (``use_orig_params=True``) and other wrappers
hand over flattened or sharded 1-D tensors whose shape says nothing about what they are. Wrapper
components of the names (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``, and
the ``module.`` of a DDP / DataParallel wrapper) are stripped before any name is matched or reported.

A parameter is left out of weight decay when, under *any* of the names it is reachable by (tied weights
have several), one of these rules of [`DecayRule`][lightning_reg.weight_decay.groups.DecayRule] holds
(``word`` = a run of letters in the own
name, e.g. ``bias_ih_l0_reverse`` has the words ``bias``, ``ih``, ``l``, ``reverse``):

* ``bias``: its own name has the word ``bias`` or ``beta`` (``bias``, ``in_proj_bias``, RNN ``bias_ih_l0``
  / ``bias_hh_l0_reverse``, Mamba ``dt_bias``, ``relative_position_bias_table``, timm ``Affine.beta``),
  or it is the table of an embedding whose own name has the word ``bias`` (T5's
  ``relative_attention_bias``: a learned attention bias stored as an ``nn.Embedding``);
* ``norm``: its owner is a torch normalization layer (``_NormBase`` incl. BatchNorm/SyncBatchNorm/
  InstanceNorm, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``LocalResponseNorm``), or a module whose class
  name has the word ``Norm`` (``Norm`` not followed by a lower-case letter: ``LlamaRMSNorm``,
  ``MambaRMSNormGated``, timm ``LayerNorm2d``, ``BatchNormAct2d``, ``EvoNorm2dS0``,
  ``FilterResponseNormTlu2d``; not ``Normalize``) and none of whose submodules hold parameters (so a
  ``PreNormBlock`` is a block, not a norm);
* ``scale``: a per-channel gain: its owner's class name has the word ``Scale`` and none of its submodules
  hold parameters (timm ``LayerScale``, MetaFormer ``Scale``, HF ``Dinov2LayerScale``), or its own name
  has the word ``scale``, ``gamma``, ``gain``, ``alpha`` or ``ls`` (ConvNeXt ``gamma``, CaiT ``gamma_1``,
  HF ``layer_scale_parameter``, CLIP ``logit_scale``, NF-Net ``gain``, ResMLP ``ls1`` and ``Affine.alpha``);
* ``declared``: some module's ``no_weight_decay()`` (the timm convention) lists it, relative to that
  module; the parameter has the attribute ``_no_weight_decay = True`` (the ``mamba_ssm`` convention); or
  its own name is ``A_log`` or ``D``, the state-space parameters ``mamba_ssm`` marks that way (the Hugging
  Face ports of Mamba, Mamba2, Jamba ... keep the names but not the mark);
* ``embedding`` (only with ``DecayRule(embeddings=True)``): its owner is ``nn.Embedding`` /
  ``nn.EmbeddingBag``, or its own name has the word ``embed``, ``embedding(s)`` or ``token(s)``
  (``pos_embed``, ``position_embeddings``, ``class_embedding``, ``cls_token``, ``distillation_token``,
  ``register_tokens``, ``mask_token``);
* ``pattern``: one of the rule's ``exclude`` selectors (``NameSelector``:
  dotted name or prefix, glob, ``re:<regex>``) selects its full name.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_reg._shared.names import (
    WRAPPERS_ANYWHERE,
    NameSelector,
    default_group_name,
    strip_wrapper_prefixes,
)
from lightning_reg._shared.validation import check_bool, check_number

__all__ = [
    "DecayRule",
    "block_layer_ids",
    "canonical_parameters",
    "classify_parameters",
    "describe_param_groups",
    "is_norm_module",
    "is_scale_module",
    "no_weight_decay_names",
    "uses_decoupled_weight_decay",
    "validate_param_groups",
    "weight_decay_param_groups",
]


_TORCH_NORMS: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
        nn.LocalResponseNorm,
        nn.CrossMapLRN2d,
    )
    if t is not None
)
_NORM_WORD = re.compile(r"Norm(?![a-z])")
_SCALE_WORD = re.compile(r"Scale(?![a-z])")
_WORDS = re.compile(r"[a-z]+")
_BIAS_WORDS = frozenset({"bias", "beta"})
_SCALE_WORDS = frozenset({"scale", "gamma", "gain", "alpha", "ls"})
#: own names of state-space dynamics parameters that ``mamba_ssm`` marks ``_no_weight_decay`` (its ports,
#: e.g. the Hugging Face Mamba / Mamba2 / Jamba models, keep the names but drop the mark)
_SSM_NAMES = frozenset({"A_log", "D"})
_EMBEDDING_WORDS = frozenset({"embed", "embeds", "embedding", "embeddings", "token", "tokens"})
_FLAT_PARAM = "_flat_param"
REASONS = ("bias", "norm", "scale", "declared", "embedding", "pattern")


@dataclass(frozen=True)
class DecayRule:
    """Which parameters are kept out of weight decay (and out of the explicit penalties).

    One object shared by
    [`weight_decay_param_groups`][lightning_reg.weight_decay.groups.weight_decay_param_groups],
    [`RegularizedModule`][lightning_reg.module.regularized.RegularizedModule]
    (``decay_rule=``), [`WeightPenalty`][lightning_reg.penalties.functional.WeightPenalty] and
    [`ProximalL1`][lightning_reg.penalties.callback.ProximalL1]; in a LightningCLI config it is a plain
    mapping
    (``decay_rule: {embeddings: true, exclude: [head]}``). The rules are described in
    ``lightning_reg.weight_decay.groups``; parameters declared by a module's ``no_weight_decay()`` or
    marked ``_no_weight_decay`` are always excluded.

    Args:
        bias: exclude parameters whose own name has the word ``bias``.
        norm: exclude the parameters of normalization layers.
        scale: exclude per-channel gains (layer scales, ``gamma``, ``logit_scale``).
        embeddings: exclude embedding tables and learned tokens / position embeddings.
        exclude: further names to exclude, with the library's selector syntax (dotted name or prefix,
            glob, ``re:<regex>``) on the full parameter names (wrapper prefixes stripped).

    Raises:
        TypeError: a flag that is not a bool, or ``exclude`` that is not a list of str.
        ValueError: an empty or invalid pattern in ``exclude``.

    Example:
        >>> rule = DecayRule(embeddings=True, exclude=["head"])
        >>> rule.exclude
        ('head',)
    """

    bias: bool = True
    norm: bool = True
    scale: bool = True
    embeddings: bool = False
    exclude: Sequence[str] = ()
    _selector: NameSelector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("bias", "norm", "scale", "embeddings"):
            check_bool(name, getattr(self, name))
        patterns = list(self.exclude) if isinstance(self.exclude, tuple) else self.exclude
        selector = NameSelector(patterns, name="exclude")
        object.__setattr__(self, "exclude", tuple(selector.patterns))
        object.__setattr__(self, "_selector", selector)

    @property
    def selector(self) -> NameSelector:
        """The ``exclude`` patterns as a ``NameSelector``.

        Example:
            >>> DecayRule(exclude=["*.gate"]).selector.matches("blocks.0.gate")
            True
        """
        return self._selector

    @classmethod
    def coerce(cls, value: Any, name: str = "rule") -> DecayRule:
        """Return ``value`` as a ``DecayRule``: a rule as is, a mapping of its arguments, or None (default).

        The mapping is the form a LightningCLI (YAML) config gives: ``{embeddings: true, exclude: [head]}``.

        Args:
            value: a ``DecayRule``, a mapping of its arguments, or ``None``.
            name: the argument's name, for the error message.

        Returns:
            The rule.

        Raises:
            TypeError: ``value`` is none of the above (or a field has the wrong type).
            ValueError: the mapping has unknown keys (they are named, with the valid ones).

        Example:
            >>> DecayRule.coerce({"embeddings": True}).embeddings, DecayRule.coerce(None) == DecayRule()
            (True, True)
        """
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls) if f.init]
            unknown = sorted(set(value) - set(valid))
            if unknown:
                raise ValueError(f"`{name}` has unknown key(s) {unknown}; valid keys: {valid}.")
            return cls(**value)
        if not isinstance(value, cls):
            raise TypeError(
                f"`{name}` must be a DecayRule, a mapping of its arguments, or None; got {value!r} of type"
                f" {type(value).__name__}."
            )
        return value


def _wrapper_depth(model: nn.Module) -> int:
    """How many leading ``module`` components belong to wrappers (DDP, DataParallel, DeepSpeed-style).

    A wrapper holds no parameter of its own and exactly one child, named ``module``. A model with a
    submodule called ``module`` next to its own parameters or other children is not a wrapper.
    """
    depth, m = 0, model
    while True:
        children = dict(m.named_children())
        if len(children) != 1 or next(m.parameters(recurse=False), None) is not None:
            return depth
        (child_name, child), = children.items()
        if child_name == "module":
            depth += 1
        elif child_name not in WRAPPERS_ANYWHERE:
            return depth
        m = child


class _Names:
    """Model-aware name stripping: anywhere-wrapper components, and the leading ``module`` of wrappers."""

    def __init__(self, model: nn.Module) -> None:
        self.depth = _wrapper_depth(model)

    def __call__(self, name: str) -> str:
        parts = [p for p in name.split(".") if p not in WRAPPERS_ANYWHERE]
        for _ in range(self.depth):
            if len(parts) > 1 and parts[0] == "module":
                parts.pop(0)
        return ".".join(parts)


def _leaf_of_parameters(module: nn.Module) -> bool:
    """No submodule of ``module`` holds a parameter (its own parameters, if any, are all there is)."""
    return not any(True for child in module.children() for _ in child.parameters())


@functools.lru_cache(maxsize=1024)
def _class_words(cls: type) -> tuple[bool, bool]:
    """Whether the class (or a base class) name has the word ``Norm``, and the word ``Scale``."""
    names = [c.__name__ for c in cls.__mro__ if c not in (nn.Module, object)]
    return any(_NORM_WORD.search(n) for n in names), any(_SCALE_WORD.search(n) for n in names)


def _class_of(module: nn.Module) -> type:
    # a plain ``type`` for the lru_cache key: mypy checks ``type[Module]`` against ``Hashable`` through
    # Module's unbound ``__hash__`` and rejects it
    return type(module)


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (a torch norm type, or a ``*Norm*`` class).

    A torch norm (``_NormBase``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ...), or a module whose class
    name (or a base class's) has the word ``Norm`` (not followed by a lower-case letter) and none of whose
    submodules hold parameters.

    Args:
        module: any module.

    Returns:
        True for e.g. ``LlamaRMSNorm``, ``MambaRMSNormGated``, timm ``LayerNorm2d``, ``EvoNorm2dS0`` or
        ``FilterResponseNormTlu2d``; False for ``Normalize``, ``Linear`` or a ``PreNormBlock`` of layers.

    Example:
        >>> is_norm_module(torch.nn.SyncBatchNorm(4)), is_norm_module(torch.nn.Linear(2, 2))
        (True, False)
    """
    if isinstance(module, _TORCH_NORMS):
        return True
    return _class_words(_class_of(module))[0] and _leaf_of_parameters(module)


def is_scale_module(module: nn.Module) -> bool:
    """Whether ``module`` is a per-channel gain such as a layer scale (class name with the word ``Scale``).

    Args:
        module: any module.

    Returns:
        True for e.g. timm ``LayerScale`` / ``LayerScale2d`` or HF ``Dinov2LayerScale`` (with no
        parameter-holding submodules); False for ``ScaledStdConv2d`` or ``Linear``.

    Example:
        >>> LayerScale = type("LayerScale", (torch.nn.Module,), {})
        >>> is_scale_module(LayerScale()), is_scale_module(torch.nn.Linear(2, 2))
        (True, False)
    """
    return _class_words(_class_of(module))[1] and _leaf_of_parameters(module)


def _words(name: str) -> set[str]:
    return set(_WORDS.findall(name.lower()))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _matches(name: str, pattern: str) -> bool:
    """Timm's ``no_weight_decay()`` convention: exact name, a module prefix of it, or an fnmatch glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def canonical_parameters(model: nn.Module, *, include_frozen: bool = False) -> list[tuple[str, nn.Parameter]]:
    """Each distinct parameter once, under the name the library reports it by, in registration order.

    The name is the first one ``named_parameters()`` gives (tied parameters appear once) with the wrapper
    components stripped (``_fsdp_wrapped_module.``, ``_orig_mod.``, a DDP wrapper's ``module.`` ...):
    the names of [`classify_parameters`][lightning_reg.weight_decay.groups.classify_parameters],
    [`block_layer_ids`][lightning_reg.weight_decay.groups.block_layer_ids] and the groups' ``param_names``.

    Args:
        model: the model, possibly wrapped.
        include_frozen: also list parameters with ``requires_grad=False``.

    Returns:
        ``(name, parameter)`` pairs.

    Raises:
        ValueError: an FSDP ``FlatParameter`` (its contents cannot be classified).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> _ = m[0].bias.requires_grad_(False)
        >>> [n for n, _ in canonical_parameters(m)], len(canonical_parameters(m, include_frozen=True))
        (['0.weight'], 2)
    """
    strip = _Names(model)
    out = []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied parameters once
        if not (p.requires_grad or include_frozen):
            continue
        if name.rsplit(".", 1)[-1] == _FLAT_PARAM:
            raise ValueError(
                f"Parameter {name!r} is an FSDP FlatParameter: its contents cannot be classified. Wrap the "
                "model with FSDP(use_orig_params=True) (Lightning: FSDPStrategy(use_orig_params=True)) or "
                "build the groups before wrapping."
            )
        out.append((strip(name), p))
    return out


def classify_parameters(
    model: nn.Module, rule: DecayRule | None = None, *, include_frozen: bool = False
) -> dict[str, set[str]]:
    """Give every trainable parameter the set of reasons it is excluded from weight decay.

    Args:
        model: the model (possibly wrapped by DDP, FSDP with ``use_orig_params=True``, activation
            checkpointing or ``torch.compile``).
        rule: the [`DecayRule`][lightning_reg.weight_decay.groups.DecayRule] (default ``DecayRule()``). An
            ``exclude`` pattern that matches no
            parameter triggers one ``UserWarning`` naming it.
        include_frozen: also classify parameters with ``requires_grad=False``.

    Returns:
        Canonical (stripped) parameter name -> reasons, a subset of ``"bias"``, ``"norm"``, ``"scale"``,
        ``"declared"``, ``"embedding"``, ``"pattern"``; an empty set means the parameter is decayed.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> sorted((k, sorted(v)) for k, v in classify_parameters(m).items())
        [('0.bias', ['bias']), ('0.weight', []), ('1.bias', ['bias', 'norm']), ('1.weight', ['norm'])]
    """
    rule = DecayRule.coerce(rule)
    strip = _Names(model)
    canonical = canonical_parameters(model, include_frozen=include_frozen)
    name_of = {id(p): n for n, p in canonical}
    reasons: dict[str, set[str]] = {n: set() for n, _ in canonical}
    aliases: dict[str, set[str]] = {n: {n} for n, _ in canonical}

    for mod_name, module in model.named_modules(remove_duplicate=False):
        own = list(module.named_parameters(recurse=False, remove_duplicate=False))
        if own:
            norm = rule.norm and is_norm_module(module)
            scale_module = rule.scale and is_scale_module(module)
            embedding_module = isinstance(module, (nn.Embedding, nn.EmbeddingBag))
            bias_table = embedding_module and bool(_words(mod_name.rpartition(".")[2]) & _BIAS_WORDS)
        for local, p in own:
            key = name_of.get(id(p))
            if key is None:
                continue
            full = _join(mod_name, local)
            aliases[key].update((strip(full), full))
            words = _words(local)
            if rule.bias and (words & _BIAS_WORDS or bias_table):
                reasons[key].add("bias")
            if norm:
                reasons[key].add("norm")
            if scale_module or (rule.scale and words & _SCALE_WORDS):
                reasons[key].add("scale")
            if getattr(p, "_no_weight_decay", False) is True or local in _SSM_NAMES:
                reasons[key].add("declared")
            if rule.embeddings and (embedding_module or words & _EMBEDDING_WORDS):
                reasons[key].add("embedding")
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names = [str(n) for n in declared()]
            if not names:
                continue
            for rel, p in module.named_parameters(remove_duplicate=False):
                key = name_of.get(id(p))
                if key is not None and any(_matches(strip_wrapper_prefixes(rel), pat) for pat in names):
                    reasons[key].add("declared")

    selector = rule.selector
    if selector.patterns:
        for key, key_names in aliases.items():
            if any(selector.matches(n) for n in key_names):
                reasons[key].add("pattern")
        what = "parameter" if include_frozen else "trainable parameter"
        message = selector.unmatched_message([n for key_names in aliases.values() for n in key_names], what)
        if message:
            warnings.warn(f"{type(model).__name__}: {message}", UserWarning, stacklevel=3)
    return reasons


def no_weight_decay_names(model: nn.Module, rule: DecayRule | None = None) -> set[str]:
    """Names (wrapper prefixes stripped, tied parameters once) of trainable parameters without weight decay.

    Args:
        model: the model, possibly wrapped (see
            [`classify_parameters`][lightning_reg.weight_decay.groups.classify_parameters]).
        rule: the [`DecayRule`][lightning_reg.weight_decay.groups.DecayRule] (default ``DecayRule()``).

    Returns:
        The set of canonical parameter names that must not be decayed.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> sorted(no_weight_decay_names(m))
        ['0.bias', '1.bias', '1.weight']
    """
    return {name for name, why in classify_parameters(model, rule).items() if why}


def block_layer_ids(model: nn.Module, *, include_frozen: bool = False) -> dict[str, int]:
    """Default layer ids for layer-wise LR decay, following the BEiT / timm convention.

    The model's "block list" is the ``nn.Sequential`` / ``nn.ModuleList`` with the most children that hold
    trainable parameters (e.g. timm ``blocks``, torchvision ViT ``encoder.layers``). Parameters registered
    before the first block (stem, patch embedding, class token, position embedding) get id 0, block ``i``
    gets ``i + 1``, everything after the last block (final norm, head) gets ``num_blocks + 1``. Without a
    block list, each top-level child with parameters gets its own id in registration order.

    Args:
        model: the model, possibly wrapped.
        include_frozen: also give ids to (and find the block list among) frozen parameters, so the ids do
            not depend on what is frozen at the time (e.g. a backbone unfrozen later).

    Returns:
        Canonical (stripped) parameter name -> layer id, for every trainable (or every) parameter.

    Example:
        >>> blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
        >>> lin = torch.nn.Linear
        >>> m = torch.nn.ModuleDict({"stem": lin(2, 2), "blocks": blocks, "head": lin(2, 1)})
        >>> sorted(set(block_layer_ids(m).items()))[:3]
        [('blocks.0.bias', 1), ('blocks.0.weight', 1), ('blocks.2.bias', 2)]
        >>> block_layer_ids(m)["stem.weight"], block_layer_ids(m)["head.weight"]
        (0, 3)
    """
    canonical = canonical_parameters(model, include_frozen=include_frozen)
    trainable = {id(p) for _, p in canonical}
    best: tuple[int, str, list[set[int]]] | None = None
    for mod_name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        blocks = [{id(p) for p in child.parameters()} & trainable for child in module.children()]
        blocks = [b for b in blocks if b]
        if len(blocks) >= 2 and (best is None or len(blocks) > best[0]):
            best = (len(blocks), mod_name, blocks)
    ids: dict[str, int] = {}
    if best is None:
        child_ids: dict[str, int] = {}
        for name, _ in canonical:
            top = name.split(".", 1)[0] if "." in name else ""
            ids[name] = child_ids.setdefault(top, len(child_ids))
        return ids
    block_of = {pid: i for i, b in enumerate(best[2]) for pid in b}
    seen_block = False
    for name, p in canonical:
        if id(p) in block_of:
            ids[name] = block_of[id(p)] + 1
            seen_block = True
        else:
            ids[name] = len(best[2]) + 1 if seen_block else 0
    return ids


def weight_decay_param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    rule: DecayRule | None = None,
    layer_decay: float | None = None,
    lr: float | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """Build optimizer parameter groups: decayed and not decayed, optionally with layer-wise LR decay.

    Every trainable parameter lands in exactly one group (tied parameters once, frozen ones left out);
    empty groups are dropped. Each group has ``params``, ``param_names`` (stripped names, which torch
    optimizers keep in their ``state_dict``), ``weight_decay`` (``0.0`` for the no-decay groups) and
    ``name`` (shown by ``LearningRateMonitor``). With ``lr`` the groups carry ``lr``. With ``layer_decay``
    each group also carries ``layer_id``, ``lr_scale = layer_decay ** (L - 1 - layer_id)``, and a real
    ``lr = lr * lr_scale`` plus ``initial_lr`` (so standard ``torch.optim.lr_scheduler`` schedulers, which
    ignore ``lr_scale``, scale each layer correctly). A layering that puts more than half of the decayed
    tensors into one layer id (e.g. the default ids on a torchvision ResNet, whose stages are separate
    containers) triggers a ``UserWarning``: layer decay then barely differs from one learning rate.

    Args:
        model: the model, possibly wrapped (DDP, FSDP ``use_orig_params=True``, checkpointing, compile).
        weight_decay: decay for the decayed groups; ``>= 0``.
        rule: which parameters are kept out of weight decay
            ([`DecayRule`][lightning_reg.weight_decay.groups.DecayRule]; default ``DecayRule()``).
        layer_decay: per-layer LR decay factor in ``(0, 1]``; needs ``lr``.
        lr: base learning rate (the rate of the last layer with ``layer_decay``).
        layer_id_fn: maps a stripped parameter name to its layer id; default
            [`block_layer_ids`][lightning_reg.weight_decay.groups.block_layer_ids].
        num_layers: ``L`` in the formula; default ``max(layer id) + 1``.

    Returns:
        A list of parameter-group dicts for any ``torch.optim.Optimizer``.

    Raises:
        TypeError: a value of the wrong type (e.g. ``weight_decay="0.1"``).
        ValueError: a negative/non-finite ``weight_decay``, ``layer_decay`` outside ``(0, 1]``,
            ``layer_decay`` without ``lr``, a layer id outside ``[0, num_layers)``, or an FSDP FlatParameter.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> groups = weight_decay_param_groups(m, 0.05)
        >>> [(g["name"], g["param_names"], g["weight_decay"]) for g in groups]
        [('decay', ['0.weight'], 0.05), ('no_decay', ['0.bias', '1.weight', '1.bias'], 0.0)]
        >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    weight_decay = _check_weight_decay(weight_decay)
    layer_decay = _check_layer_decay(layer_decay)
    lr = _check_lr(lr)
    if layer_decay is not None and lr is None:
        raise ValueError(
            "`layer_decay` needs the base `lr` (weight_decay_param_groups(..., lr=...)) so every group "
            "carries a real `lr`; standard schedulers ignore `lr_scale`."
        )
    reasons = classify_parameters(model, rule)
    canonical = canonical_parameters(model)

    if layer_decay is None:
        groups = []
        for decayed in (True, False):
            members = [(n, p) for n, p in canonical if (not reasons[n]) == decayed]
            if not members:
                continue
            group: dict[str, Any] = {
                "name": "decay" if decayed else "no_decay",
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": weight_decay if decayed else 0.0,
            }
            if lr is not None:
                group["lr"] = lr
            groups.append(group)
        return groups

    assert lr is not None  # refused above: layer_decay needs lr
    if layer_id_fn is None:
        default_ids = block_layer_ids(model)
        layer_of = {name: default_ids[name] for name, _ in canonical}
    else:
        layer_of = {name: int(layer_id_fn(name)) for name, _ in canonical}
    n_layers = num_layers if num_layers is not None else (max(layer_of.values(), default=0) + 1)
    for name, lid in layer_of.items():
        if not 0 <= lid < n_layers:
            raise ValueError(f"Layer id {lid} of parameter {name!r} is outside [0, num_layers={n_layers}).")
    _warn_if_degenerate(model, {n: lid for n, lid in layer_of.items() if not reasons[n]})
    buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, p in canonical:
        buckets.setdefault((layer_of[name], not reasons[name]), []).append((name, p))
    groups = []
    for lid, decayed in sorted(buckets, key=lambda k: (k[0], not k[1])):
        members = buckets[(lid, decayed)]
        scale = float(layer_decay) ** (n_layers - 1 - lid)
        groups.append(
            {
                "name": f"layer_{lid}_{'decay' if decayed else 'no_decay'}",
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": weight_decay if decayed else 0.0,
                "layer_id": lid,
                "lr_scale": scale,
                "lr": float(lr) * scale,
                "initial_lr": float(lr) * scale,
            }
        )
    return groups


def _warn_if_degenerate(model: nn.Module, decayed_layer_of: dict[str, int]) -> None:
    """Warn when one layer id holds more than half of the decayed tensors (and there are >= 3 of them)."""
    n = len(decayed_layer_of)
    if n < 3 or len(set(decayed_layer_of.values())) < 2:
        return
    counts: dict[int, int] = {}
    for lid in decayed_layer_of.values():
        counts[lid] = counts.get(lid, 0) + 1
    lid, most = max(counts.items(), key=lambda kv: kv[1])
    if most * 2 > n:
        example = next(name for name, i in decayed_layer_of.items() if i == lid)
        warnings.warn(
            f"layer_decay: layer id {lid} holds {most} of the {n} decayed tensors of {type(model).__name__}"
            f" (e.g. {example!r}), so most of the model shares one learning rate. The default layer ids "
            "follow one block list (timm/BEiT); for models built of stages give your own ids "
            "(RegularizedModule.get_layer_id, or layer_id_fn=...).",
            UserWarning,
            stacklevel=3,
        )


def _check_weight_decay(weight_decay: Any) -> float:
    """Validate ``weight_decay``: a finite number ``>= 0`` (TypeError / ValueError otherwise).

    Example:
        >>> _check_weight_decay(0.05)
        0.05
    """
    return check_number("weight_decay", weight_decay, low=0.0)


def _check_layer_decay(layer_decay: Any) -> float | None:
    """Validate ``layer_decay``: a number in ``(0, 1]`` or ``None``.

    Example:
        >>> _check_layer_decay(0.75), _check_layer_decay(None)
        (0.75, None)
    """
    return check_number("layer_decay", layer_decay, low=0.0, high=1.0, low_open=True, none_ok=True)


def _check_lr(lr: Any) -> float | None:
    """Validate a base learning rate: a finite number ``>= 0`` or ``None``.

    Example:
        >>> _check_lr(1e-3)
        0.001
    """
    return check_number("lr", lr, low=0.0, none_ok=True)


def uses_decoupled_weight_decay(optimizer: Optimizer) -> bool:
    """Whether an optimizer applies weight decay decoupled from the gradient (AdamW-style).

    Decoupled weight decay shrinks the weights by ``lr * weight_decay`` at each step; SGD and Adam instead
    add ``weight_decay * w`` to the gradient (an L2 term), which Adam then rescales per coordinate: the same
    number means a different regularizer. True for ``AdamW`` and its subclasses and for any optimizer
    built with ``decoupled_weight_decay=True`` (e.g. ``torch.optim.Adam``).

    Args:
        optimizer: a constructed optimizer.

    Returns:
        Whether its ``weight_decay`` is decoupled.

    Example:
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> [uses_decoupled_weight_decay(o) for o in (torch.optim.AdamW(p), torch.optim.SGD(p, lr=0.1))]
        [True, False]
    """
    if optimizer.defaults.get("decoupled_weight_decay"):
        return True
    return any(cls.__name__ == "AdamW" for cls in type(optimizer).__mro__)


def validate_param_groups(groups: Iterable[dict[str, Any]], model: nn.Module | None = None) -> None:
    """Check that no parameter is in two groups and, given ``model``, that every trainable one is in one.

    Args:
        groups: parameter-group dicts (e.g. from
            [`weight_decay_param_groups`][lightning_reg.weight_decay.groups.weight_decay_param_groups],
            possibly edited).
        model: if given, also require every trainable parameter of it to be in some group.

    Raises:
        ValueError: naming the parameter and the groups involved.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> validate_param_groups([{"params": [m.weight]}, {"params": [m.bias]}], m)
        >>> validate_param_groups([{"params": [m.weight], "name": "a"}, {"params": [m.weight], "name": "b"}])
        Traceback (most recent call last):
        ...
        ValueError: Parameter 'param[0]' is in two groups: 'a' and 'b'. Each parameter must be in exactly one.
    """
    names = {}
    if model is not None:
        names = {id(p): n for n, p in canonical_parameters(model)}
    owner: dict[int, str] = {}
    for gi, group in enumerate(groups):
        gname = str(group.get("name", default_group_name(gi)))
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        pnames = list(group.get("param_names", []))
        for pi, p in enumerate(params):
            if id(p) in owner:
                pname = names.get(id(p)) or (pnames[pi] if pi < len(pnames) else f"param[{pi}]")
                raise ValueError(
                    f"Parameter {pname!r} is in two groups: {owner[id(p)]!r} and {gname!r}. "
                    "Each parameter must be in exactly one."
                )
            owner[id(p)] = gname
    if model is not None:
        missing = [n for pid, n in names.items() if pid not in owner]
        if missing:
            more = " ..." if len(missing) > 10 else ""
            raise ValueError(f"Trainable parameters in no group: {missing[:10]}{more}")


def describe_param_groups(groups: Iterable[dict[str, Any]]) -> str:
    """Format a small fixed-width table of parameter groups: name, #tensors, #params, weight_decay, lr.

    Args:
        groups: parameter-group dicts, or an optimizer's ``param_groups``.

    Returns:
        The table as a string (one line per group plus a header and a total line).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> print(describe_param_groups(weight_decay_param_groups(m, 0.05, lr=1e-3)))
        group     tensors  params  weight_decay  lr
        decay           1      16          0.05  0.001
        no_decay        3      12             0  0.001
        total           4      28
    """
    rows = [("group", "tensors", "params", "weight_decay", "lr")]
    n_tensors = n_params = 0
    for gi, g in enumerate(groups):
        params = g["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        count = sum(p.numel() for p in params)
        n_tensors += len(params)
        n_params += count
        lr = g.get("lr")
        rows.append(
            (
                str(g.get("name", default_group_name(gi))),
                str(len(params)),
                str(count),
                f"{g.get('weight_decay', '-'):g}" if "weight_decay" in g else "-",
                f"{float(lr):.4g}" if isinstance(lr, (int, float, torch.Tensor)) else "-",
            )
        )
    rows.append(("total", str(n_tensors), str(n_params), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)] + [r[4]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
