"""``RegularizedModule``: LightningModule mixin whose ``configure_optimizers`` builds weight-decay groups."""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import WarningCache, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_reg._shared.validation import check_bool, check_callable, check_choice, check_str
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.mixing.core import BatchMixer
from lightning_reg.mixing.mixin import BatchMixingMixin
from lightning_reg.penalties.core import WeightPenalty
from lightning_reg.penalties.mixin import PenaltyMixin
from lightning_reg.presets.core import Preset
from lightning_reg.presets.module_side import _check_preset_optimizer, _resolve_module_preset
from lightning_reg.weight_decay.groups import (
    DecayRule,
    _check_layer_decay,
    _check_lr,
    _check_rule,
    _check_weight_decay,
    _parameters,
    block_layer_ids,
    classify_parameters,
    describe_param_groups,
    validate_param_groups,
    weight_decay_param_groups,
)
from lightning_reg.weight_decay.schedulers import WarmupCosineLR

__all__ = ["DEFAULT_WEIGHT_DECAY", "RegularizedModule"]

_warning_cache = WarningCache()


def _bound_optimizer_arguments(optimizer: Any) -> tuple[str, dict[str, Any]]:
    """Return the optimizer class name and the arguments a ``functools.partial`` binds to non-defaults.

    LightningCLI (jsonargparse) hands an ``OptimizerCallable`` over as a partial holding *every* argument
    of the class, defaults included; only values that differ from the class's defaults were configured.
    """
    if not isinstance(optimizer, functools.partial):
        return getattr(optimizer, "__name__", type(optimizer).__name__), {}
    cls = next(
        (a for a in (optimizer.func, *optimizer.args) if isinstance(a, type) and issubclass(a, Optimizer)),
        None,
    )
    if cls is None:
        return "optimizer", {}
    try:
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    except (TypeError, ValueError):  # pragma: no cover - builtin signatures
        defaults = {}
    bound = {k: v for k, v in optimizer.keywords.items() if k in defaults and v != defaults[k]}
    return cls.__name__, bound


def _default_optimizer_defaults(cls: type) -> tuple[str | None, dict[str, Any]]:
    """Return the class of a module's default ``optimizer`` argument and that class's defaults."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            param = inspect.signature(init).parameters.get("optimizer")
        except (TypeError, ValueError):  # pragma: no cover
            continue
        if param is None:
            continue
        default = param.default
        if isinstance(default, functools.partial):
            default = default.func
        if isinstance(default, type) and issubclass(default, Optimizer):
            try:
                values = {k: p.default for k, p in inspect.signature(default).parameters.items()}
            except (TypeError, ValueError):  # pragma: no cover
                values = {}
            return default.__name__, values
        return None, {}
    return None, {}


#: Weight decay of the decayed groups when neither the module, a preset nor the optimizer's arguments set one.
DEFAULT_WEIGHT_DECAY = 0.05


class _AddParamGroup:
    """Replaces ``optimizer.add_param_group`` on the instance: later-added parameters get the decay split.

    A group added after ``configure_optimizers`` (e.g. by ``BackboneFinetuning`` unfreezing a backbone)
    is split like the configured groups (decay / no decay by the module's :class:`DecayRule`, per layer
    id with layer decay), named after its parameters' common module prefix, given ``param_names`` when
    the optimizer keeps them, the configured ``weight_decay`` and the group's own settings (``lr`` ...).
    The sub-groups of one added group keep their ratios to the last one (the group such callbacks update
    later through ``param_groups[-1]``): see :func:`_follow_leader_lrs`.
    """

    def __init__(self, module: RegularizedModule, optimizer: Optimizer) -> None:
        self.module = module
        self.original = type(optimizer).add_param_group.__get__(optimizer)
        self.optimizer = optimizer

    def __call__(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if "param_names" in param_group or not params:  # built deliberately (or Lightning's own restore)
            self.original(param_group)
            return
        module, cfg = self.module, self.module.regularization_config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "exclude matched nothing" was said at configure time
            reasons = classify_parameters(module, cfg["decay_rule"], include_frozen=True)
        names = {id(p): n for n, p in _parameters(module, include_frozen=True)}
        known = set(names.values())
        named = [(names.get(id(p), f"param_{i}"), p) for i, p in enumerate(params)]
        layer_decay = cfg["layer_decay"]
        base = {k: v for k, v in param_group.items() if k not in ("params", "name")}
        weight_decay = cfg["weight_decay"]
        if weight_decay is None:
            weight_decay = float(self.optimizer.defaults.get("weight_decay", 0.0))
        lr = float(base.get("lr", self.optimizer.defaults.get("lr", 0.0)))
        ref_scale = 1.0
        if layer_decay is not None:
            _warning_cache.warn(
                "RegularizedModule(layer_decay=...): a parameter group added during training (e.g. by "
                "BackboneFinetuning) gets its lr from the caller, which BackboneFinetuning derives from "
                "param_groups[0] (the lowest layer's rate); the added parameters get that lr times the ratio"
                " of their layer's scale to that group's."
            )
            ref_scale = float(self.optimizer.param_groups[0].get("lr_scale", 1.0))
        buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
        for name, p in named:
            lid = module.get_layer_id(name) if layer_decay is not None and name in known else -1
            buckets.setdefault((lid, not reasons.get(name)), []).append((name, p))
        prefix = _common_prefix([n for n, _ in named]) or f"added_{len(self.optimizer.param_groups)}"
        taken = {g.get("name") for g in self.optimizer.param_groups}
        order = sorted(buckets, key=lambda k: (k[0], not k[1]))
        subgroups = []
        for lid, decayed in order:
            members = buckets[(lid, decayed)]
            scale = 1.0
            if layer_decay is not None and lid >= 0:
                n_layers = module._n_layers or module._num_layers()
                scale = float(layer_decay) ** (n_layers - 1 - lid) / ref_scale
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
            if cfg["keep_param_names"]:
                group["param_names"] = [n for n, _ in members]
            subgroups.append(group)
        leader = subgroups[-1]
        for group in subgroups[:-1]:  # followers keep their ratio to the leader's lr
            group["lr_follows"] = leader["name"]
            group["lr_ratio"] = group["lr"] / leader["lr"] if leader["lr"] else 1.0
        for group in subgroups:
            self.original(group)


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


def _follow_leader_lrs(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Optimizer step pre-hook: sub-groups of one added group follow the lr of their leader (host floats)."""
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


class RegularizedModule(PenaltyMixin, BatchMixingMixin, LightningModule):
    """LightningModule base class / mixin: decay and no-decay parameter groups, layer decay, any optimizer.

    Subclass it instead of ``LightningModule`` (or list it before another LightningModule base) and pass the
    regularization arguments to ``super().__init__``; the default :meth:`configure_optimizers` then builds
    the groups of :func:`~lightning_reg.weight_decay_param_groups` from the model's own parameters (after
    the strategy wrapped it: DDP, DeepSpeed, FSDP with ``use_orig_params=True``), creates the optimizer and
    the optional scheduler, and reports the groups once on rank zero (``verbose``).
    Modules that cannot take constructor arguments call :meth:`configure_regularization` instead.

    **One source of truth for ``lr`` and ``weight_decay``.** Every group carries the module's ``lr`` and
    ``weight_decay``, so the same values given to the optimizer (a ``functools.partial`` or, in a
    LightningCLI config, ``optimizer.init_args``) would be silently overridden: a conflicting value there
    is refused with a ``ValueError``. Set them on the module, or set the module's ``lr`` / ``weight_decay``
    to ``None`` to take the optimizer's. The optimizer's ``defaults`` are set to the configured values.

    **Parameter groups added later** (``BackboneFinetuning`` unfreezing a backbone, or any
    ``optimizer.add_param_group`` without ``param_names``) get the same treatment as the configured ones:
    a decay / no-decay split by the same :class:`~lightning_reg.DecayRule`, the configured
    ``weight_decay``, names (``<module prefix>_decay`` / ``_no_decay``) and ``param_names``. The sub-groups
    of one added group keep their lr ratios to the last one, which is the group ``BackboneFinetuning``
    updates each epoch. With ``layer_decay``, ``BackboneFinetuning`` derives the backbone's rate from
    ``param_groups[0]``, the lowest layer's rate; the added parameters get that rate times the ratio of
    their layer's scale to that group's scale.

    LightningCLI: type the same arguments in the subclass ``__init__`` and forward them; ``optimizer`` and
    ``lr_scheduler`` are ``OptimizerCallable`` / ``LRSchedulerCallable`` so YAML can choose any class
    (``class_path`` + ``init_args`` without ``params``/``optimizer``), and ``decay_rule`` is a mapping
    (``decay_rule: {embeddings: true, exclude: [head]}``). Do not also use the CLI's automatic
    ``--optimizer``: that replaces ``configure_optimizers`` and with it the groups.

    Explicit penalties and batch mixing come with it (:class:`~lightning_reg.penalties.PenaltyMixin`,
    :class:`~lightning_reg.mixing.BatchMixingMixin`): pass ``weight_penalty=WeightPenalty(...)`` for an
    L1/L2/elastic-net penalty on the same decayed parameters, and ``batch_mixer=BatchMixer(...)`` for
    Mixup/CutMix/label smoothing on the device (compute the loss with :meth:`mixing_loss`). If you override
    ``on_fit_start``, ``on_before_optimizer_step``, ``on_save_checkpoint`` or ``on_load_checkpoint``, call
    ``super()`` in it (your ``on_after_batch_transfer`` needs nothing: mixing is applied to its result); an
    ``on_before_optimizer_step`` that never calls ``super()`` is refused when a penalty is set.

    Layer-wise LR decay (``layer_decay``): the layer id of each parameter comes from :meth:`get_layer_id`;
    the default is the BEiT/timm convention of
    :func:`~lightning_reg.weight_decay.groups.block_layer_ids` (stem,
    embeddings, class/position tokens: 0; block ``i``: ``i + 1``; final norm and head: ``num_blocks + 1``).
    Group ``lr = lr * layer_decay ** (L - 1 - layer_id)``.

    Args:
        *args: passed on to the next ``__init__`` in the MRO (cooperative mixin).
        optimizer: callable ``params -> Optimizer``; default ``torch.optim.AdamW``.
        lr: base learning rate put in every group; None keeps the optimizer's own ``lr`` (its default or
            its ``init_args``), which layer decay then scales.
        weight_decay: decay of the decayed groups (``>= 0``); the no-decay groups get 0. ``None``
            (default): the preset's value with a preset, else the optimizer's own configured value (its
            LightningCLI ``init_args`` or a ``functools.partial``), else 0.05.
        decay_rule: which parameters are kept out of weight decay (:class:`~lightning_reg.DecayRule` or a
            mapping of its arguments; default ``DecayRule()``: biases, norms, per-channel scales, declared
            names).
        layer_decay: layer-wise LR decay factor in ``(0, 1]``; None disables it.
        lr_scheduler: callable ``optimizer -> scheduler`` (e.g. :class:`~lightning_reg.WarmupCosineLR`); a
            ``WarmupCosineLR`` without ``total_steps`` gets ``trainer.estimated_stepping_batches``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``; None (default): ``"epoch"`` for
            ``ReduceLROnPlateau`` (its metric exists only after validation), ``"step"`` otherwise.
        lr_scheduler_monitor: metric a ``ReduceLROnPlateau`` watches.
        keep_param_names: keep each group's ``param_names`` in the optimizer (torch stores them in its
            ``state_dict``; groups added later get them too).
        weight_penalty: explicit L1/L2 penalty on the decayed parameters (None: none).
        batch_mixer: Mixup/CutMix/label-smoothing mixer for training batches (None: no mixing, or the
            preset's).
        preset: a regularization preset (``"mild"``, ``"medium"``, ``"strong"`` or a
            :class:`~lightning_reg.presets.Preset`) for the module side: its weight decay (unless
            ``weight_decay`` is given; skipped with a note for optimizers without decoupled weight decay) and
            its label smoothing and Mixup/CutMix (unless ``batch_mixer`` is given; they need ``num_classes``
            and make training targets ``(B, K)`` probabilities: use :meth:`mixing_loss`). The Trainer side
            comes from :func:`~lightning_reg.preset_callbacks`.
        num_classes: number of classes, for the preset's label smoothing and mixing.
        verbose: ``0`` quiet, ``1`` one line per fit naming the optimizer and the groups, ``2`` the group
            table.
        **kwargs: passed on to the next ``__init__`` in the MRO.

    Example:
        >>> import torch, lightning as L
        >>> from lightning_reg import RegularizedModule
        >>> class Net(RegularizedModule):
        ...     def __init__(self, lr: float = 1e-2, weight_decay: float = 0.05) -> None:
        ...         super().__init__(lr=lr, weight_decay=weight_decay)
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        >>> opt = Net().configure_optimizers()["optimizer"]
        >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
        [('decay', 1, 0.05), ('no_decay', 3, 0.0)]
    """

    def __init__(
        self,
        *args: Any,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = None,
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] | None = None,
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        weight_penalty: WeightPenalty | None = None,
        batch_mixer: BatchMixer | None = None,
        preset: str | Preset | None = None,
        num_classes: int | None = None,
        verbose: int | bool = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.preset, weight_decay, batch_mixer, self._preset_weight_decay = _resolve_module_preset(
            preset,
            num_classes=num_classes,
            weight_decay=weight_decay,
            batch_mixer=batch_mixer,
            default_weight_decay=None,  # decided in configure_regularization: the optimizer's, else 0.05
            verbose=verbose,
        )
        self.weight_penalty = weight_penalty
        self.batch_mixer = batch_mixer
        self.configure_regularization(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            decay_rule=decay_rule,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            lr_scheduler_monitor=lr_scheduler_monitor,
            keep_param_names=keep_param_names,
            verbose=verbose,
        )

    def configure_regularization(
        self,
        *,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = 0.05,
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] | None = None,
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        verbose: int | bool = 1,
    ) -> None:
        """Set (or change) the regularization settings; same arguments as the constructor.

        Args:
            optimizer: callable ``params -> Optimizer``.
            lr: base learning rate, or None for the optimizer's own.
            weight_decay: decay of the decayed groups, ``>= 0``, or None for the optimizer's configured
                value (else :data:`DEFAULT_WEIGHT_DECAY`).
            decay_rule: which parameters are kept out of weight decay.
            layer_decay: layer-wise LR decay factor in ``(0, 1]`` or None.
            lr_scheduler: callable ``optimizer -> scheduler`` or None.
            lr_scheduler_interval: ``"step"``, ``"epoch"`` or None (by scheduler type).
            lr_scheduler_monitor: metric for ``ReduceLROnPlateau``.
            keep_param_names: keep ``param_names`` in the optimizer's groups.
            verbose: ``0``, ``1`` or ``2`` (see the class).

        Raises:
            TypeError: a value of the wrong type.
            ValueError: a value out of range, or ``lr`` / ``weight_decay`` set both here and (to another
                value) in the optimizer's bound arguments.

        Example:
            >>> import torch
            >>> m = RegularizedModule()
            >>> m.configure_regularization(optimizer=torch.optim.SGD, lr=0.1, weight_decay=1e-4)
        """
        weight_decay = None if weight_decay is None else _check_weight_decay(weight_decay)
        lr = _check_lr(lr)
        layer_decay = _check_layer_decay(layer_decay)
        if lr_scheduler_interval is not None:
            check_choice("lr_scheduler_interval", lr_scheduler_interval, ("step", "epoch"))
        check_callable("optimizer", optimizer, "a callable params -> Optimizer")
        check_callable("lr_scheduler", lr_scheduler, "a callable optimizer -> scheduler", none_ok=True)
        check_str("lr_scheduler_monitor", lr_scheduler_monitor)
        optimizer_name, bound = _bound_optimizer_arguments(optimizer)
        default_name, default_values = _default_optimizer_defaults(type(self))
        preset = getattr(self, "preset", None)
        wd_from_preset = isinstance(preset, Preset) and getattr(self, "_preset_weight_decay", False)
        for key, ours in (("lr", lr), ("weight_decay", weight_decay)):
            from_preset = key == "weight_decay" and wd_from_preset
            ours_from = f"the preset {preset.name!r}'s" if from_preset else "the module's"
            if key in bound and ours is not None and float(bound[key]) != ours:
                if default_name not in (None, optimizer_name) and default_values.get(key) == bound[key]:
                    # LightningCLI (jsonargparse) keeps the init_args the new class also accepts when a config
                    # changes class_path: the value is most likely the default optimizer's, carried over.
                    rank_zero_warn(
                        f"{type(self).__name__}: the optimizer {optimizer_name} has {key}={bound[key]!r}, the"
                        f" default of {default_name} (this module's default optimizer): LightningCLI carries"
                        " init_args over when a config changes class_path, so it is taken as carried over and"
                        f" {ours_from} {key}={ours!r} is used. If you did set {optimizer_name}({key}="
                        f"{bound[key]!r}) yourself, set the module's `{key}` to it instead."
                    )
                    continue
                if from_preset:
                    where = f"{ours_from} {key}={ours!r} on {type(self).__name__}, which goes into the"
                    where += " decayed parameter groups"
                    fix = (
                        "the module's `weight_decay` (model.init_args.weight_decay in a LightningCLI config) "
                        "overrides the preset's, or remove it from the optimizer's arguments."
                    )
                else:
                    where = f"{key}={ours!r} on {type(self).__name__}, whose value goes into every"
                    where += " parameter group"
                    fix = (
                        f"on the module (model.init_args.{key} in a LightningCLI config), or set the "
                        f"module's `{key}` to None (null) to use the optimizer's."
                    )
                raise ValueError(
                    f"`{key}` is set twice: {optimizer_name}({key}={bound[key]!r}) in the optimizer's "
                    f"arguments and {where} and would silently override the optimizer's. "
                    f"Set it in one place: {fix}"
                )
        if weight_decay is None and "weight_decay" not in bound:
            weight_decay = DEFAULT_WEIGHT_DECAY  # nothing configured anywhere: the library's default
        self.regularization_config: dict[str, Any] = {
            "optimizer": optimizer,
            "lr": lr,
            "weight_decay": weight_decay,
            "decay_rule": _check_rule(decay_rule, "decay_rule"),
            "layer_decay": layer_decay,
            "lr_scheduler": lr_scheduler,
            "lr_scheduler_interval": lr_scheduler_interval,
            "lr_scheduler_monitor": lr_scheduler_monitor,
            "keep_param_names": check_bool("keep_param_names", keep_param_names),
            "verbose": check_verbose(verbose),
        }
        self._layer_ids: dict[str, int] | None = None
        self._n_layers: int | None = None

    @property
    def lr(self) -> float | None:
        """The base learning rate of the groups (``None``: the optimizer's own); settable.

        The Tuner's learning-rate finder (``Tuner.lr_find``) writes its suggestion here, so the next
        ``configure_optimizers`` uses it.

        Example:
            >>> m = RegularizedModule(lr=0.1)
            >>> m.lr = 0.02
            >>> m.regularization_config["lr"]
            0.02
        """
        return self.regularization_config["lr"]

    @lr.setter
    def lr(self, value: float | None) -> None:
        self.regularization_config["lr"] = _check_lr(value)

    @property
    def decay_rule(self) -> DecayRule:
        """The :class:`~lightning_reg.DecayRule` in force (penalties and ``ProximalL1`` default to it).

        Example:
            >>> RegularizedModule(decay_rule=DecayRule(embeddings=True)).decay_rule.embeddings
            True
        """
        return self.regularization_config["decay_rule"]

    def get_layer_id(self, name: str) -> int:
        """Return the layer id (for layer-wise LR decay) of parameter ``name`` (wrapper prefixes stripped).

        Override to impose your own layering; ids must be ``0 .. L-1`` with the head at ``L - 1``. The
        default is :func:`~lightning_reg.weight_decay.groups.block_layer_ids` of this module.

        Args:
            name: parameter name relative to this LightningModule, e.g. ``"net.blocks.3.attn.qkv.weight"``.

        Returns:
            The layer id.

        Example:
            >>> m = RegularizedModule()
            >>> m.stem = torch.nn.Linear(2, 2)
            >>> m.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
            >>> m.head = torch.nn.Linear(2, 1)
            >>> [m.get_layer_id(n) for n in ("stem.weight", "blocks.0.bias", "blocks.1.weight", "head.bias")]
            [0, 1, 2, 3]
        """
        if self._layer_ids is None:
            self._layer_ids = block_layer_ids(self, include_frozen=True)
        return self._layer_ids[name]

    def _num_layers(self) -> int:
        """``L`` of the layer-decay formula: the largest id among the trainable parameters, plus one."""
        ids = [self.get_layer_id(n) for n, _ in _parameters(self)]
        return max(ids, default=0) + 1

    def param_groups(self) -> list[dict[str, Any]]:
        """Build the parameter groups from :attr:`regularization_config` (override to add your own edits).

        Returns:
            Groups as from :func:`~lightning_reg.weight_decay_param_groups`.

        Example:
            >>> m = RegularizedModule(weight_decay=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> [g["param_names"] for g in m.param_groups()]
            [['fc.weight'], ['fc.bias']]
        """
        cfg = self.regularization_config
        self._layer_ids = None
        layer_decay = cfg["layer_decay"]
        self._n_layers = self._num_layers() if layer_decay is not None else None
        with warnings.catch_warnings(record=True) as caught:  # relay on rank zero only (not once per rank)
            warnings.simplefilter("always")
            groups = weight_decay_param_groups(
                self,
                # weight_decay=None: the optimizer's own; built with 0 and set after construction
                cfg["weight_decay"] if cfg["weight_decay"] is not None else 0.0,
                rule=cfg["decay_rule"],
                layer_decay=layer_decay,
                # layer decay with the optimizer's own lr: build with lr=1 and rescale after construction
                lr=cfg["lr"] if cfg["lr"] is not None or layer_decay is None else 1.0,
                layer_id_fn=self.get_layer_id if layer_decay is not None else None,
                num_layers=self._n_layers if layer_decay is not None else None,
            )
        for w in caught:
            rank_zero_warn(str(w.message), category=w.category)
        return groups

    def configure_optimizers(self) -> Any:
        """Create the optimizer over :meth:`param_groups` and the optional scheduler.

        Returns:
            ``{"optimizer": opt}`` or ``{"optimizer": opt, "lr_scheduler": {"scheduler": ..., "interval":
            ..., "monitor": ...}}`` as Lightning expects.

        Raises:
            ValueError: if a parameter is in two groups or a trainable one in none (edited groups).

        Example:
            >>> m = RegularizedModule(lr=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> type(m.configure_optimizers()["optimizer"]).__name__
            'AdamW'
        """
        cfg = self.regularization_config
        self._check_penalty_hook_chain()
        groups = self.param_groups()
        validate_param_groups(groups, self)
        if not cfg["keep_param_names"]:
            groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
        optimizer = cfg["optimizer"](groups)
        preset = getattr(self, "preset", None)
        self._preset_weight_decay_skipped = False
        if isinstance(preset, Preset) and getattr(self, "_preset_weight_decay", False):
            self._preset_weight_decay_skipped = not _check_preset_optimizer(optimizer, preset)
        if cfg["layer_decay"] is not None and cfg["lr"] is None:
            base = optimizer.defaults["lr"]
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = float(base) * group["lr_scale"]
        if cfg["weight_decay"] is None:
            own = float(optimizer.defaults.get("weight_decay", 0.0))
            for group in optimizer.param_groups:
                if not str(group.get("name", "")).endswith("no_decay"):
                    group["weight_decay"] = own
        else:
            optimizer.defaults["weight_decay"] = cfg["weight_decay"]
        if cfg["lr"] is not None:
            optimizer.defaults["lr"] = cfg["lr"]
        # groups added later (BackboneFinetuning) get the same split, names and settings
        object.__setattr__(optimizer, "add_param_group", _AddParamGroup(self, optimizer))
        optimizer.register_step_pre_hook(_follow_leader_lrs)
        self.param_group_report = describe_param_groups(optimizer.param_groups)
        self._report_groups(optimizer)
        if cfg["lr_scheduler"] is None:
            return {"optimizer": optimizer}
        scheduler = cfg["lr_scheduler"](optimizer)
        interval = cfg["lr_scheduler_interval"]
        if interval is None:
            interval = "epoch" if isinstance(scheduler, ReduceLROnPlateau) else "step"
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            trainer = self._trainer
            if trainer is None:
                raise RuntimeError("WarmupCosineLR without total_steps needs a Trainer attached")
            by_step = interval == "step"
            # When resuming, the checkpoint's scheduler state brings total_steps. Do not ask for
            # estimated_stepping_batches then: it builds the train dataloader before Lightning restores the
            # loops, and Lightning then never loads a stateful dataloader's state (mid-epoch resume would
            # restart the epoch's data from its first batch).
            if getattr(trainer, "ckpt_path", None) is None:
                total = trainer.estimated_stepping_batches if by_step else trainer.max_epochs
                if trainer.fast_dev_run and total <= scheduler.warmup_steps:
                    total = scheduler.warmup_steps + 1  # a smoke test: the schedule's shape does not matter
                elif 0 < total <= scheduler.warmup_steps:
                    raise ValueError(
                        f"WarmupCosineLR: warmup_steps={scheduler.warmup_steps} is not shorter than this run"
                        f" ({total} {'optimizer steps' if by_step else 'epochs'} estimated by the Trainer);"
                        " lower warmup_steps or train longer."
                    )
                if total != 0:  # 0: a zero-length train dataloader; Lightning warns and trains nothing
                    scheduler.set_total_steps(total)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = cfg["lr_scheduler_monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _report_groups(self, optimizer: Optimizer) -> None:
        verbose = self.regularization_config["verbose"]
        if verbose >= 2:
            say(verbose, 2, f"{type(self).__name__}: {type(optimizer).__name__} parameter groups\n"
                f"{self.param_group_report}")
            return
        parts = []
        for g in optimizer.param_groups:
            wd = g.get("weight_decay", 0.0)
            parts.append(f"{g.get('name', '?')} {len(g['params'])} tensors (wd {wd:g})")
        shown = parts if len(parts) <= 4 else [*parts[:3], f"... {len(parts)} groups"]
        say(verbose, 1, f"{type(self).__name__}: {type(optimizer).__name__}, " + "; ".join(shown)
            + " (verbose=2: the table).")
