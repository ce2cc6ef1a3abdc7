"""Parameter groups added to the optimizer during training get the decay split (package-internal).

``RegularizedModule.configure_optimizers`` replaces ``optimizer.add_param_group`` on the instance with
``DecaySplitOnAdd`` and registers ``follow_leader_lrs`` as a step pre-hook, so a group added later (e.g. by
``BackboneFinetuning`` unfreezing a backbone) is split and named like the configured groups.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reg.module.config import RegularizationConfig
from lightning_reg.weight_decay.groups import canonical_parameters, classify_parameters

__all__ = ["DecaySplitOnAdd", "follow_leader_lrs"]

_warning_cache = WarningCache()


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    if not parts:
        return ""
    prefix = []
    for components in zip(*parts):
        if len(set(components)) != 1:
            break
        prefix.append(components[0])
    return ".".join(prefix)


class DecaySplitOnAdd:
    """Replaces ``optimizer.add_param_group`` on the instance: later-added parameters get the decay split.

    A group added after ``configure_optimizers`` without ``param_names`` is split like the configured
    groups (decay / no decay by the configuration's ``DecayRule``, per layer id with layer decay), named
    after its parameters' common module prefix, given ``param_names`` when the optimizer keeps them, the
    configured ``weight_decay`` and the group's own settings (``lr`` ...). The sub-groups of one added
    group keep their ratios to the last one (the group such callbacks update later through
    ``param_groups[-1]``): see ``follow_leader_lrs``. A group that carries ``param_names`` was built
    deliberately (or is Lightning's own restore) and is added as it is.

    Args:
        optimizer: the optimizer built from the configured groups.
        model: the module whose parameters the groups hold.
        config: the settings the optimizer was built with.
        layer_id: parameter name -> layer id (used with ``config.layer_decay``).
        num_layers: ``L`` of the layer-decay formula, computed when first needed.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
        >>> config = RegularizationConfig(lr=0.1, keep_param_names=False)
        >>> split = DecaySplitOnAdd(opt, model, config, lambda name: 0, lambda: 1)
        >>> split({"params": model[1].parameters()})
        >>> [(g.get("name"), g["weight_decay"]) for g in opt.param_groups]
        [(None, 0), ('1_decay', 0.05), ('1_no_decay', 0.0)]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        config: RegularizationConfig,
        layer_id: Callable[[str], int],
        num_layers: Callable[[], int],
    ) -> None:
        self.original = type(optimizer).add_param_group.__get__(optimizer)
        self.optimizer = optimizer
        self.model = model
        self.config = config
        self.layer_id = layer_id
        self.num_layers = num_layers

    def __call__(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if "param_names" in param_group or not params:  # built deliberately (or Lightning's own restore)
            self.original(param_group)
            return
        cfg, optimizer = self.config, self.optimizer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "exclude matched nothing" was said at configure time
            reasons = classify_parameters(self.model, cfg.decay_rule, include_frozen=True)
        names = {id(p): n for n, p in canonical_parameters(self.model, include_frozen=True)}
        known = set(names.values())
        named = [(names.get(id(p), f"param_{i}"), p) for i, p in enumerate(params)]
        layer_decay = cfg.layer_decay
        base = {k: v for k, v in param_group.items() if k not in ("params", "name")}
        weight_decay = cfg.weight_decay
        if weight_decay is None:
            weight_decay = float(optimizer.defaults.get("weight_decay", 0.0))
        lr = float(base.get("lr", optimizer.defaults.get("lr", 0.0)))
        ref_scale = 1.0
        if layer_decay is not None:
            _warning_cache.warn(
                "RegularizedModule(layer_decay=...): a parameter group added during training (e.g. by "
                "BackboneFinetuning) gets its lr from the caller, which BackboneFinetuning derives from "
                "param_groups[0] (the lowest layer's rate); the added parameters get that lr times the ratio"
                " of their layer's scale to that group's."
            )
            ref_scale = float(optimizer.param_groups[0].get("lr_scale", 1.0))
        buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
        for name, p in named:
            lid = self.layer_id(name) if layer_decay is not None and name in known else -1
            buckets.setdefault((lid, not reasons.get(name)), []).append((name, p))
        prefix = _common_prefix([n for n, _ in named]) or f"added_{len(optimizer.param_groups)}"
        taken = {g.get("name") for g in optimizer.param_groups}
        subgroups = []
        for lid, decayed in sorted(buckets, key=lambda k: (k[0], not k[1])):
            members = buckets[(lid, decayed)]
            scale = 1.0
            if layer_decay is not None and lid >= 0:
                scale = float(layer_decay) ** (self.num_layers() - 1 - lid) / ref_scale
            kind = "decay" if decayed else "no_decay"
            name = f"{prefix}_{kind}" if lid < 0 else f"{prefix}_layer_{lid}_{kind}"
            while name in taken:
                name += "_"
            taken.add(name)
            group = dict(base)
            group.update(
                name=name,
                params=[p for _, p in members],
                weight_decay=float(base.get("weight_decay", weight_decay)) if decayed else 0.0,
                lr=lr * scale,
                initial_lr=lr * scale,
            )
            if cfg.keep_param_names:
                group["param_names"] = [n for n, _ in members]
            subgroups.append(group)
        leader = subgroups[-1]
        for group in subgroups[:-1]:  # followers keep their ratio to the leader's lr
            group["lr_follows"] = leader["name"]
            group["lr_ratio"] = group["lr"] / leader["lr"] if leader["lr"] else 1.0
        for group in subgroups:
            self.original(group)


def follow_leader_lrs(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Optimizer step pre-hook: the sub-groups of one added group follow their leader's lr (host floats).

    Args:
        optimizer: the optimizer about to step.
        args: the step's positional arguments (unused).
        kwargs: the step's keyword arguments (unused).

    Example:
        >>> import torch
        >>> w, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [w], "lr": 0.1, "lr_follows": "lead", "lr_ratio": 0.5},
        ...                        {"params": [b], "lr": 0.4, "name": "lead"}], lr=0.1)
        >>> follow_leader_lrs(opt, (), {})
        >>> opt.param_groups[0]["lr"]
        0.2
    """
    by_name = None
    for group in optimizer.param_groups:
        leader_name = group.get("lr_follows")
        if leader_name is None:
            continue
        if by_name is None:
            by_name = {g.get("name"): g for g in optimizer.param_groups}
        leader = by_name.get(leader_name)
        if leader is not None:
            group["lr"] = leader["lr"] * group["lr_ratio"]
