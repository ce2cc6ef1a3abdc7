"""``RegularizationConfig``: the settings of a ``RegularizedModule``, validated once, precedence resolved.

A module's regularization settings arrive from up to four places: the module's own arguments, a
preset, the arguments bound to the optimizer (a ``functools.partial`` or LightningCLI ``init_args``) and
the library's defaults. ``RegularizationConfig.resolve`` takes them at the boundary (the module's
``__init__`` / ``configure_regularization``), validates every value once, settles which source wins and
returns one frozen object; everything downstream (``param_groups``, ``configure_optimizers``, groups added
later) reads it and checks nothing again.

Precedence, weakest first: the library's default < the optimizer's own configured value < the preset <
the module's argument < an explicit component. For ``weight_decay``: the module's ``weight_decay``, else
the preset's, else the value bound to the optimizer, else ``DEFAULT_WEIGHT_DECAY``; a value bound to the
optimizer that differs from the module's or the preset's is refused, since the groups would silently
override it. For the batch mixer: an explicit ``batch_mixer`` wins over the preset's mixer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_reg._shared.validation import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_number,
    check_str,
)
from lightning_reg._shared.verbosity import check_verbose
from lightning_reg.mixing.mixers import BatchMixer
from lightning_reg.module._optimizer_args import bound_optimizer_arguments, default_optimizer_defaults
from lightning_reg.presets.module_side import preset_mixer
from lightning_reg.presets.registry import Preset, get_preset
from lightning_reg.weight_decay.groups import DecayRule

__all__ = ["DEFAULT_WEIGHT_DECAY", "RegularizationConfig"]

#: Weight decay of the decayed groups when neither the module, a preset nor the optimizer's arguments set one.
DEFAULT_WEIGHT_DECAY = 0.05

_SOURCES = ("module", "preset", "optimizer", "default")
_INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class RegularizationConfig:
    """The settings of a ``RegularizedModule``: one frozen object, validated when built.

    ``RegularizedModule`` builds it with ``resolve`` from its arguments and keeps it as
    ``regularization_config``; build one directly for a fully explicit configuration (every value then
    counts as the module's own). Values are normalised on construction: ``decay_rule`` may be given as a
    mapping (the LightningCLI form) or ``None``, ``preset`` as a name, ``verbose`` as a bool.
    ``dataclasses.replace`` gives a changed copy, validated the same way.

    Args:
        optimizer: callable ``params -> Optimizer`` (a class or a ``functools.partial``).
        lr: base learning rate put in every group; ``None``: the optimizer's own.
        weight_decay: decay of the decayed groups, ``>= 0``; ``None`` exactly when the optimizer's own
            configured value is used (``weight_decay_source == "optimizer"``).
        weight_decay_source: where ``weight_decay`` came from: ``"module"`` (the module's argument, or
            a config built directly), ``"preset"`` (``preset.weight_decay``; skipped with a note for an
            optimizer without decoupled weight decay), ``"optimizer"`` or ``"default"``
            (``DEFAULT_WEIGHT_DECAY``).
        decay_rule: which parameters are kept out of weight decay (``DecayRule``, a mapping of its
            arguments, or ``None`` for ``DecayRule()``).
        layer_decay: layer-wise LR decay factor in ``(0, 1]``; ``None`` disables it.
        lr_scheduler: callable ``optimizer -> scheduler``, or ``None``.
        lr_scheduler_interval: ``"step"``, ``"epoch"`` or ``None`` (``"epoch"`` for ``ReduceLROnPlateau``,
            ``"step"`` otherwise).
        lr_scheduler_monitor: the metric a ``ReduceLROnPlateau`` watches.
        keep_param_names: keep each group's ``param_names`` in the optimizer.
        preset: the module side's preset (a name or a ``Preset``), or ``None``.
        num_classes: number of classes, for the preset's label smoothing and mixing (``>= 2``), or ``None``.
        verbose: ``0`` quiet, ``1`` one line per fit, ``2`` the group table.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a value out of range, or a ``weight_decay`` that contradicts its source.

    Example:
        >>> cfg = RegularizationConfig(lr=0.1, decay_rule={"embeddings": True}, verbose=False)
        >>> cfg.weight_decay, cfg.weight_decay_source, cfg.decay_rule.embeddings, cfg.verbose
        (0.05, 'module', True, 0)
        >>> import dataclasses
        >>> dataclasses.replace(cfg, lr=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: `lr` must be a finite number >= 0 or None; got -1.0.
    """

    optimizer: OptimizerCallable = torch.optim.AdamW
    lr: float | None = 1e-3
    weight_decay: float | None = DEFAULT_WEIGHT_DECAY
    weight_decay_source: Literal["module", "preset", "optimizer", "default"] = "module"
    decay_rule: DecayRule = field(default_factory=DecayRule)
    layer_decay: float | None = None
    lr_scheduler: LRSchedulerCallable | None = None
    lr_scheduler_interval: Literal["step", "epoch"] | None = None
    lr_scheduler_monitor: str = "val_loss"
    keep_param_names: bool = True
    preset: Preset | None = None
    num_classes: int | None = None
    verbose: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.preset is not None:
            set_(self, "preset", get_preset(self.preset))
        if self.weight_decay is not None:
            set_(self, "weight_decay", check_number("weight_decay", self.weight_decay, low=0.0))
        set_(self, "lr", check_number("lr", self.lr, low=0.0, none_ok=True))
        layer_decay = check_number(
            "layer_decay", self.layer_decay, low=0.0, high=1.0, low_open=True, none_ok=True
        )
        set_(self, "layer_decay", layer_decay)
        if self.lr_scheduler_interval is not None:
            check_choice("lr_scheduler_interval", self.lr_scheduler_interval, _INTERVALS)
        check_callable("optimizer", self.optimizer, "a callable params -> Optimizer")
        check_callable("lr_scheduler", self.lr_scheduler, "a callable optimizer -> scheduler", none_ok=True)
        check_str("lr_scheduler_monitor", self.lr_scheduler_monitor)
        set_(self, "decay_rule", DecayRule.coerce(self.decay_rule, "decay_rule"))
        set_(self, "keep_param_names", check_bool("keep_param_names", self.keep_param_names))
        set_(self, "num_classes", check_int("num_classes", self.num_classes, low=2, none_ok=True))
        set_(self, "verbose", check_verbose(self.verbose))
        self._check_weight_decay_source()

    def _check_weight_decay_source(self) -> None:
        source, value = self.weight_decay_source, self.weight_decay
        check_choice("weight_decay_source", source, _SOURCES)
        if (value is None) != (source == "optimizer"):
            raise ValueError(
                f"`weight_decay` is None exactly when it is the optimizer's own (weight_decay_source="
                f"'optimizer'); got weight_decay={value!r} with weight_decay_source={source!r}."
            )
        if source == "preset" and (self.preset is None or value != self.preset.weight_decay):
            raise ValueError(
                f"weight_decay_source='preset' needs the preset's weight decay; got weight_decay={value!r} "
                f"with preset={self.preset.name if self.preset else None!r}."
            )
        if source == "default" and value != DEFAULT_WEIGHT_DECAY:
            raise ValueError(
                f"weight_decay_source='default' means DEFAULT_WEIGHT_DECAY={DEFAULT_WEIGHT_DECAY!r}; got "
                f"weight_decay={value!r}."
            )

    @classmethod
    def resolve(
        cls,
        owner: type | None = None,
        *,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = None,
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] | None = None,
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        preset: str | Preset | None = None,
        num_classes: int | None = None,
        verbose: int | bool = 1,
    ) -> RegularizationConfig:
        """Build the configuration from a module's arguments, as ``RegularizedModule`` does.

        The values are validated first, then the precedence is settled, then the optimizer's bound
        arguments are checked against the values in force.

        ``weight_decay``: the given value, else the preset's, else the value bound to the optimizer (kept as
        ``None``: the optimizer's own), else ``DEFAULT_WEIGHT_DECAY``. An ``lr`` or ``weight_decay`` bound to
        the optimizer that differs from the one in force here is refused with a ``ValueError`` naming both
        (the groups would silently override it), unless it equals the default of the module's default
        optimizer: LightningCLI carries ``init_args`` over when a config changes ``class_path``, so that value
        is taken as carried over, with a warning.

        Args:
            owner: the module's class, named in the messages; its ``__init__``'s default ``optimizer`` is
                the "default optimizer" above. ``None``: ``RegularizedModule`` and no default optimizer.
            optimizer: see the class; also the other arguments, except:
            lr: base learning rate.
            weight_decay: the module's weight decay, or ``None`` to leave it to the preset, the optimizer or
                the default.
            decay_rule: which parameters are kept out of weight decay.
            layer_decay: layer-wise LR decay factor.
            lr_scheduler: callable ``optimizer -> scheduler``.
            lr_scheduler_interval: ``"step"``, ``"epoch"`` or ``None``.
            lr_scheduler_monitor: metric for ``ReduceLROnPlateau``.
            keep_param_names: keep ``param_names`` in the groups.
            preset: the preset (a name or a ``Preset``).
            num_classes: number of classes, for the preset's mixer.
            verbose: ``0``, ``1`` or ``2``.

        Returns:
            The configuration.

        Raises:
            TypeError: a value of the wrong type.
            ValueError: a value out of range, or ``lr`` / ``weight_decay`` set both here (or by the preset)
                and, to another value, in the optimizer's bound arguments.

        Example:
            >>> from functools import partial
            >>> cfg = RegularizationConfig.resolve(preset="strong", num_classes=10)
            >>> cfg.weight_decay, cfg.weight_decay_source
            (0.2, 'preset')
            >>> cfg = RegularizationConfig.resolve(optimizer=partial(torch.optim.SGD, weight_decay=1e-4))
            >>> cfg.weight_decay, cfg.weight_decay_source
            (None, 'optimizer')
        """
        preset = None if preset is None else get_preset(preset)
        optimizer_name, bound = bound_optimizer_arguments(optimizer)
        source: Literal["module", "preset", "optimizer", "default"]
        if weight_decay is not None:
            source = "module"
        elif preset is not None:
            weight_decay, source = preset.weight_decay, "preset"
        elif "weight_decay" in bound:
            source = "optimizer"
        else:
            weight_decay, source = DEFAULT_WEIGHT_DECAY, "default"
        config = cls(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            weight_decay_source=source,
            decay_rule=DecayRule() if decay_rule is None else decay_rule,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            lr_scheduler_monitor=lr_scheduler_monitor,
            keep_param_names=keep_param_names,
            preset=preset,
            num_classes=num_classes,
            verbose=verbose,
        )
        config._check_optimizer_arguments(owner, optimizer_name, bound)
        return config

    def _check_optimizer_arguments(
        self, owner: type | None, optimizer_name: str, bound: dict[str, Any]
    ) -> None:
        """Refuse an ``lr`` / ``weight_decay`` bound to the optimizer that differs from the one in force."""
        owner_name = owner.__name__ if owner is not None else "RegularizedModule"
        default_name, default_values = default_optimizer_defaults(owner) if owner is not None else (None, {})
        from_preset = self.weight_decay_source == "preset"
        for key, ours in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if key not in bound or ours is None or float(bound[key]) == ours:
                continue
            preset_value = key == "weight_decay" and from_preset
            preset_name = self.preset.name if self.preset is not None else None
            ours_from = f"the preset {preset_name!r}'s" if preset_value else "the module's"
            if default_name not in (None, optimizer_name) and default_values.get(key) == bound[key]:
                # LightningCLI (jsonargparse) keeps the init_args the new class also accepts when a config
                # changes class_path: the value is most likely the default optimizer's, carried over.
                rank_zero_warn(
                    f"{owner_name}: the optimizer {optimizer_name} has {key}={bound[key]!r}, the"
                    f" default of {default_name} (this module's default optimizer): LightningCLI carries"
                    " init_args over when a config changes class_path, so it is taken as carried over and"
                    f" {ours_from} {key}={ours!r} is used. If you did set {optimizer_name}({key}="
                    f"{bound[key]!r}) yourself, set the module's `{key}` to it instead."
                )
                continue
            if preset_value:
                where = f"{ours_from} {key}={ours!r} on {owner_name}, which goes into the decayed"
                where += " parameter groups"
                fix = (
                    "the module's `weight_decay` (model.init_args.weight_decay in a LightningCLI config) "
                    "overrides the preset's, or remove it from the optimizer's arguments."
                )
            else:
                where = f"{key}={ours!r} on {owner_name}, whose value goes into every parameter group"
                fix = (
                    f"on the module (model.init_args.{key} in a LightningCLI config), or set the "
                    f"module's `{key}` to None (null) to use the optimizer's."
                )
            raise ValueError(
                f"`{key}` is set twice: {optimizer_name}({key}={bound[key]!r}) in the optimizer's "
                f"arguments and {where} and would silently override the optimizer's. "
                f"Set it in one place: {fix}"
            )

    def choose_batch_mixer(self, batch_mixer: BatchMixer | None = None) -> BatchMixer | None:
        """Return the batch mixer in force: an explicit one wins over the preset's.

        Without an explicit mixer, the preset's (a ``PresetMixer``) when the preset smooths labels or mixes
        and ``num_classes`` is known (a note says it is skipped without ``num_classes``); else ``None``.
        Each call builds a new preset mixer: call it once.

        Args:
            batch_mixer: the explicit mixer, or ``None``.

        Returns:
            The mixer, or ``None`` for no mixing.

        Example:
            >>> type(RegularizationConfig(preset="medium", num_classes=3).choose_batch_mixer()).__name__
            'PresetMixer'
            >>> RegularizationConfig().choose_batch_mixer() is None
            True
        """
        if batch_mixer is not None or self.preset is None:
            return batch_mixer
        return preset_mixer(self.preset, self.num_classes, verbose=self.verbose)
