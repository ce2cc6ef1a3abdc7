"""Which parameters get weight decay, layer-wise learning-rate decay, and a readable report of the groups.

Pure PyTorch: nothing here needs Lightning. Parameters are classified by the type of the module that owns
them and by their name, never by ``ndim``: FSDP (``use_orig_params=True``) and other wrappers hand over
flattened or sharded 1-D tensors whose shape says nothing about what they are. Wrapper components of the
names (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``, a leading ``module.``)
are stripped before any name is matched or reported.

A parameter is left out of weight decay when, under *any* of the names it is reachable by (tied weights
have several), one of these rules holds:

* ``bias``: its own name is ``bias`` or ends with ``_bias`` (e.g. ``nn.MultiheadAttention.in_proj_bias``);
* ``norm``: its owner is a torch normalization layer (``_NormBase`` incl. BatchNorm/SyncBatchNorm/
  InstanceNorm, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``LocalResponseNorm``) or a class whose name
  ends in ``Norm`` plus an optional ``Act``/``2d``/``Fp32``-style suffix (``LlamaRMSNorm``, timm
  ``LayerNorm2d``, ``BatchNormAct2d``, ``RmsNorm``; but not ``Normalize`` or ``PreNormBlock``);
* ``declared``: some module's ``no_weight_decay()`` (the timm convention) lists it, relative to that module;
* ``embedding`` (only with ``exclude_embeddings=True``): its owner is ``nn.Embedding``/``nn.EmbeddingBag``
  or its own name is a learned token/position table (:data:`EMBEDDING_PARAM_PATTERNS`);
* ``pattern``: its name matches one of the user's ``exclude`` glob patterns.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMBEDDING_PARAM_PATTERNS",
    "WRAPPER_PREFIXES",
    "block_layer_ids",
    "classify_parameters",
    "describe_param_groups",
    "is_norm_module",
    "no_weight_decay_names",
    "strip_wrapper_prefixes",
    "validate_param_groups",
    "weight_decay_param_groups",
]

#: Name components inserted by wrappers (FSDP, activation checkpointing, ``torch.compile``, DDP/DataParallel).
WRAPPER_PREFIXES: tuple[str, ...] = (
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "_orig_mod.",
    "module.",
)
_ANYWHERE = tuple(p[:-1] for p in WRAPPER_PREFIXES if p != "module.")

#: Own names of learned tokens / position tables treated as embeddings when ``exclude_embeddings=True``
#: (the names torchvision's reference script and timm use).
EMBEDDING_PARAM_PATTERNS: tuple[str, ...] = (
    "pos_embed",
    "pos_embedding",
    "position_embedding*",
    "absolute_pos_embed",
    "cls_token",
    "class_token",
    "dist_token",
    "reg_token",
    "mask_token",
    "relative_position_bias_table",
)

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
_NORM_CLASS_NAME = re.compile(r"Norm(Act)?(\d*[dD])?(Fp32|Fp16|\d*)$")
_FLAT_PARAM = "_flat_param"


def strip_wrapper_prefixes(name: str) -> str:
    """Remove wrapper components from a dotted parameter or module name.

    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module`` and ``_orig_mod`` are removed wherever they
    occur; ``module`` only as leading components (DDP / DataParallel), so a user's own submodule called
    ``module`` deeper in the model keeps its name.

    Args:
        name: a name as produced by ``named_parameters()`` / ``named_modules()`` of a wrapped model.

    Returns:
        The name the unwrapped model would use.

    Example:
        >>> strip_wrapper_prefixes("module._fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.fc.bias")
        'blocks.0.fc.bias'
    """
    parts = [p for p in name.split(".") if p not in _ANYWHERE]
    while len(parts) > 1 and parts[0] == "module":
        parts.pop(0)
    if parts == ["module"]:
        return ""
    return ".".join(parts)


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch type or a ``*Norm*`` class name).

    Args:
        module: any module.

    Returns:
        True for torch norms (``_NormBase``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ...) and classes
        such as ``LlamaRMSNorm`` or timm ``LayerNorm2d``; False for e.g. ``Normalize`` or ``Linear``.

    Example:
        >>> is_norm_module(torch.nn.SyncBatchNorm(4)), is_norm_module(torch.nn.Linear(2, 2))
        (True, False)
    """
    if isinstance(module, _TORCH_NORMS):
        return True
    return any(_NORM_CLASS_NAME.search(cls.__name__) for cls in type(module).__mro__ if cls is not nn.Module)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _matches(name: str, pattern: str) -> bool:
    """Exact name, a module prefix of it, or an fnmatch glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Canonical (first-seen, stripped) name of each distinct trainable parameter, in registration order."""
    out = []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied parameters once
        if not p.requires_grad:
            continue
        if name.rsplit(".", 1)[-1] == _FLAT_PARAM:
            raise ValueError(
                f"Parameter {name!r} is an FSDP FlatParameter: its contents cannot be classified. Wrap the "
                "model with FSDP(use_orig_params=True) (Lightning: FSDPStrategy(use_orig_params=True)) or "
                "build the groups before wrapping."
            )
        out.append((strip_wrapper_prefixes(name), p))
    return out


def classify_parameters(
    model: nn.Module,
    *,
    exclude_bias: bool = True,
    exclude_norm: bool = True,
    exclude_embeddings: bool = False,
    exclude: Sequence[str] = (),
) -> dict[str, set[str]]:
    """Give every trainable parameter the set of reasons it is excluded from weight decay.

    Args:
        model: the model (possibly wrapped by DDP, FSDP with ``use_orig_params=True``, activation
            checkpointing or ``torch.compile``).
        exclude_bias: exclude parameters named ``bias`` / ``*_bias``.
        exclude_norm: exclude parameters owned by normalization layers.
        exclude_embeddings: exclude ``nn.Embedding``/``nn.EmbeddingBag`` weights and learned token or
            position tables (:data:`EMBEDDING_PARAM_PATTERNS`).
        exclude: glob patterns matched against the (stripped) full parameter names; a pattern that matches
            no trainable parameter triggers one ``UserWarning`` naming it.

    Returns:
        Canonical (stripped) parameter name -> reasons (subset of ``{"bias", "norm", "declared",
        "embedding", "pattern"}``); an empty set means the parameter is decayed.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> sorted((k, sorted(v)) for k, v in classify_parameters(m).items())
        [('0.bias', ['bias']), ('0.weight', []), ('1.bias', ['bias', 'norm']), ('1.weight', ['norm'])]
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    canonical = _trainable_parameters(model)
    name_of = {id(p): n for n, p in canonical}
    reasons: dict[str, set[str]] = {n: set() for n, _ in canonical}
    aliases: dict[str, set[str]] = {n: {n} for n, _ in canonical}

    for mod_name, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False, remove_duplicate=False):
            key = name_of.get(id(p))
            if key is None:
                continue
            aliases[key].add(strip_wrapper_prefixes(_join(mod_name, local)))
            if exclude_bias and (local == "bias" or local.endswith("_bias")):
                reasons[key].add("bias")
            if exclude_norm and is_norm_module(module):
                reasons[key].add("norm")
            if exclude_embeddings and (
                isinstance(module, (nn.Embedding, nn.EmbeddingBag))
                or any(fnmatch.fnmatchcase(local, pat) for pat in EMBEDDING_PARAM_PATTERNS)
            ):
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

    unmatched = []
    for pattern in exclude:
        hit = False
        for key, names in aliases.items():
            if any(_matches(n, pattern) for n in names):
                reasons[key].add("pattern")
                hit = True
        if not hit:
            unmatched.append(pattern)
    if unmatched:
        warnings.warn(
            f"exclude pattern(s) {unmatched} matched no trainable parameter of {type(model).__name__}; "
            "check the names with [n for n, _ in model.named_parameters()].",
            UserWarning,
            stacklevel=3,
        )
    return reasons


def no_weight_decay_names(
    model: nn.Module,
    *,
    exclude_bias: bool = True,
    exclude_norm: bool = True,
    exclude_embeddings: bool = False,
    exclude: Sequence[str] = (),
) -> set[str]:
    """Names (wrapper prefixes stripped, tied parameters once) of trainable parameters without weight decay.

    Args:
        model: the model, possibly wrapped (see :func:`classify_parameters`).
        exclude_bias: exclude biases.
        exclude_norm: exclude normalization-layer parameters.
        exclude_embeddings: exclude embeddings and learned token/position tables.
        exclude: extra glob patterns on the full parameter names.

    Returns:
        The set of canonical parameter names that must not be decayed.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> sorted(no_weight_decay_names(m))
        ['0.bias', '1.bias', '1.weight']
    """
    reasons = classify_parameters(
        model,
        exclude_bias=exclude_bias,
        exclude_norm=exclude_norm,
        exclude_embeddings=exclude_embeddings,
        exclude=exclude,
    )
    return {name for name, why in reasons.items() if why}


def block_layer_ids(model: nn.Module) -> dict[str, int]:
    """Default layer ids for layer-wise LR decay, following the BEiT / timm convention.

    The model's "block list" is the ``nn.Sequential`` / ``nn.ModuleList`` with the most children that hold
    trainable parameters (e.g. timm ``blocks``, torchvision ViT ``encoder.layers``). Parameters registered
    before the first block (stem, patch embedding, class token, position embedding) get id 0, block ``i``
    gets ``i + 1``, everything after the last block (final norm, head) gets ``num_blocks + 1``. Without a
    block list, each top-level child with parameters gets its own id in registration order.

    Args:
        model: the model, possibly wrapped.

    Returns:
        Canonical (stripped) parameter name -> layer id, for every trainable parameter.

    Example:
        >>> blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
        >>> lin = torch.nn.Linear
        >>> m = torch.nn.ModuleDict({"stem": lin(2, 2), "blocks": blocks, "head": lin(2, 1)})
        >>> sorted(set(block_layer_ids(m).items()))[:3]
        [('blocks.0.bias', 1), ('blocks.0.weight', 1), ('blocks.2.bias', 2)]
        >>> block_layer_ids(m)["stem.weight"], block_layer_ids(m)["head.weight"]
        (0, 3)
    """
    canonical = _trainable_parameters(model)
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
    exclude_bias: bool = True,
    exclude_norm: bool = True,
    exclude_embeddings: bool = False,
    exclude: Sequence[str] = (),
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
    ignore ``lr_scale``, scale each layer correctly).

    Args:
        model: the model, possibly wrapped (DDP, FSDP ``use_orig_params=True``, checkpointing, compile).
        weight_decay: decay for the decayed groups; ``>= 0``.
        exclude_bias: keep biases out of weight decay.
        exclude_norm: keep normalization-layer parameters out of weight decay.
        exclude_embeddings: keep embeddings and learned token/position tables out of weight decay.
        exclude: glob patterns of further parameter names to keep out of weight decay.
        layer_decay: per-layer LR decay factor in ``(0, 1]``; needs ``lr``.
        lr: base learning rate (the rate of the last layer with ``layer_decay``).
        layer_id_fn: maps a stripped parameter name to its layer id; default :func:`block_layer_ids`.
        num_layers: ``L`` in the formula; default ``max(layer id) + 1``.

    Returns:
        A list of parameter-group dicts for any ``torch.optim.Optimizer``.

    Raises:
        ValueError: for a negative/non-finite ``weight_decay``, ``layer_decay`` outside ``(0, 1]``,
            ``layer_decay`` without ``lr``, a layer id outside ``[0, num_layers)``, or an FSDP FlatParameter.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> groups = weight_decay_param_groups(m, 0.05)
        >>> [(g["name"], g["param_names"], g["weight_decay"]) for g in groups]
        [('decay', ['0.weight'], 0.05), ('no_decay', ['0.bias', '1.weight', '1.bias'], 0.0)]
        >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    weight_decay = _check_weight_decay(weight_decay)
    if layer_decay is not None:
        if not isinstance(layer_decay, (int, float)) or not 0.0 < float(layer_decay) <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] (or None to disable), got {layer_decay!r}.")
        if lr is None:
            raise ValueError(
                "layer_decay needs the base lr (weight_decay_param_groups(..., lr=...)) so every group "
                "carries a real `lr`; standard schedulers ignore `lr_scale`."
            )
    if lr is not None and (not isinstance(lr, (int, float)) or not float(lr) >= 0.0):
        raise ValueError(f"lr must be a number >= 0, got {lr!r}.")

    reasons = classify_parameters(
        model,
        exclude_bias=exclude_bias,
        exclude_norm=exclude_norm,
        exclude_embeddings=exclude_embeddings,
        exclude=exclude,
    )
    canonical = _trainable_parameters(model)

    if layer_decay is None:
        buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
        for name, p in canonical:
            buckets.setdefault((0, not reasons[name]), []).append((name, p))
        groups = []
        for decayed in (True, False):
            members = buckets.get((0, decayed))
            if not members:
                continue
            group: dict[str, Any] = {
                "name": "decay" if decayed else "no_decay",
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": weight_decay if decayed else 0.0,
            }
            if lr is not None:
                group["lr"] = float(lr)
            groups.append(group)
        return groups

    if layer_id_fn is None:
        default_ids = block_layer_ids(model)
        layer_of = {name: default_ids[name] for name, _ in canonical}
    else:
        layer_of = {name: int(layer_id_fn(name)) for name, _ in canonical}
    n_layers = num_layers if num_layers is not None else (max(layer_of.values(), default=0) + 1)
    for name, lid in layer_of.items():
        if not 0 <= lid < n_layers:
            raise ValueError(f"Layer id {lid} of parameter {name!r} is outside [0, num_layers={n_layers}).")
    buckets = {}
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
                "lr": float(lr) * scale,  # type: ignore[arg-type]
                "initial_lr": float(lr) * scale,  # type: ignore[arg-type]
            }
        )
    return groups


def _check_weight_decay(weight_decay: float) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
    if not float(weight_decay) >= 0.0 or weight_decay == float("inf"):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}.")
    return float(weight_decay)


def validate_param_groups(groups: Iterable[dict[str, Any]], model: nn.Module | None = None) -> None:
    """Check that no parameter is in two groups and, given ``model``, that every trainable one is in one.

    Args:
        groups: parameter-group dicts (e.g. from :func:`weight_decay_param_groups`, possibly edited).
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
        names = {id(p): n for n, p in _trainable_parameters(model)}
    owner: dict[int, str] = {}
    for gi, group in enumerate(groups):
        gname = str(group.get("name", f"group {gi}"))
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
                str(g.get("name", f"group_{gi}")),
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
