"""The Trainer side of a preset: early stopping with restore, the overfitting monitor, clipping, drop-path.

``preset_callbacks("medium")`` returns the callbacks a preset asks for; the module side (weight decay on
the decay group, label smoothing, Mixup / CutMix) comes from ``RegularizedModule(preset="medium",
num_classes=K)``. [`preset_config`][lightning_reg.presets.callbacks.preset_config] writes the same callbacks
as a LightningCLI config fragment.

Example:
    >>> [type(cb).__name__ for cb in preset_callbacks("medium")]
    ['PresetSummary', 'EarlyStopping', 'OverfittingMonitor', 'GradientClipping', 'PresetStochasticDepth']
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_reg._shared.validation import check_choice, check_str
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.early_stopping.callback import EarlyStopping
from lightning_reg.gradients.clipping import GradientClipping
from lightning_reg.overfitting.callback import OverfittingMonitor
from lightning_reg.presets.registry import (
    PRESET_NAMES,
    Preset,
    describe_preset,
    get_preset,
    overfitting_hint,
    preset_skip_note,
)
from lightning_reg.stochastic_depth.callback import StochasticDepthScheduler
from lightning_reg.stochastic_depth.layers import (
    DEFAULT_BRANCH_ENDS,
    add_stochastic_depth,
    find_drop_rate_modules,
)

__all__ = ["PresetStochasticDepth", "PresetSummary", "preset_callbacks", "preset_config"]

#: Components applied by ``RegularizedModule(preset=...)``, not by the callbacks.
_MODULE_SIDE = ("weight_decay", "label_smoothing", "mixup_prob", "mixup_alpha", "cutmix_prob", "cutmix_alpha")


def _module_side(p: Preset) -> dict[str, Any]:
    return {k: getattr(p, k) for k in _MODULE_SIDE}


class PresetSummary(Callback):
    """Say which preset runs (one line at fit start) and whether the module side matches it.

    The module side of a preset (weight decay, label smoothing, mixing) lives in
    ``RegularizedModule(preset=...)``; this callback notes when the trained module does not carry the same
    preset, so half a preset never runs unnoticed.

    Args:
        preset: the preset (or its name).
        verbose: ``0`` quiet, ``1`` the one line (default), ``2`` the same.

    Example:
        >>> PresetSummary("mild").preset.name
        'mild'
    """

    def __init__(self, preset: str | Preset = "mild", verbose: int | bool = 1) -> None:
        super().__init__()
        self.preset = get_preset(preset)
        self.verbose = check_verbose(verbose)

    @property
    def hint(self) -> str:
        """What to try if the model still overfits under this preset (see ``overfitting_hint``).

        Example:
            >>> PresetSummary("medium").hint.startswith("Try the next stronger preset, 'strong'")
            True
        """
        return overfitting_hint(self.preset)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        line = describe_preset(self.preset)
        if getattr(pl_module, "_preset_weight_decay_skipped", False):
            optimizer = type(trainer.optimizers[0]).__name__ if trainer.optimizers else "the optimizer"
            line += f"; its weight decay is skipped ({optimizer} has no decoupled weight decay)"
        say(self.verbose, 1, line)
        module_preset = getattr(pl_module, "preset", None)
        if module_preset is None:
            say(
                self.verbose,
                1,
                preset_skip_note(
                    self.preset,
                    "weight decay, label smoothing and mixing",
                    f"{type(pl_module).__name__} carries no preset, so its own settings apply (its weight "
                    "decay included); the preset's come from "
                    f"RegularizedModule(preset={self.preset.name!r}, num_classes=K)",
                ),
            )
        elif isinstance(module_preset, Preset) and _module_side(module_preset) != _module_side(self.preset):
            say(
                self.verbose,
                1,
                f"preset {self.preset.name!r}: the module's preset is {module_preset.name!r} "
                f"with other values for weight decay, label smoothing or mixing "
                f"({_module_side(module_preset)}).",
            )


def _branch_ends(model: nn.Module, branch_ends: Mapping[Any, str] | None) -> dict[type[nn.Module], str]:
    """``{block type: branch end}`` from types, dotted class paths or bare class names found in ``model``."""
    out: dict[type[nn.Module], str] = {}
    for key, end in (branch_ends or {}).items():
        check_str("branch_ends value", end)
        if isinstance(key, type):
            out[key] = end
            continue
        check_str("branch_ends key", key)
        if "." in key:
            module_name, _, attr = key.rpartition(".")
            try:
                out[getattr(importlib.import_module(module_name), attr)] = end
            except (ImportError, AttributeError) as err:
                raise ValueError(f"`branch_ends`: cannot import the block class {key!r} ({err}).") from err
            continue
        # a bare class name matches the model's modules of that class name (none: no such block here)
        out.update(dict.fromkeys({type(m) for m in model.modules() if type(m).__name__ == key}, end))
    return out


class PresetStochasticDepth(StochasticDepthScheduler):
    """Drop-path of a preset: insert DropPath into residual blocks if the model has none, then schedule it.

    At fit start: if the model already holds drop-path modules (our ``DropPath``, torchvision's
    ``StochasticDepth``, timm's ``DropPath``) and some rate is above 0, the model's own depth profile is
    kept and scaled so that its deepest rate becomes ``max_rate`` (the scheduler's
    ``scale_model_rates=True``: a timm model built with ``drop_path_rate=d`` gets timm's linear rule up to
    ``max_rate`` over all its blocks, although timm builds no module for the first block at rate 0); with
    all their rates at 0 the depth rule sets them; otherwise
    [`add_stochastic_depth`][lightning_reg.stochastic_depth.layers.add_stochastic_depth]
    inserts DropPath into every residual block it knows (torchvision ``BasicBlock``/``Bottleneck``, plus
    ``branch_ends``), at the depth rule's rates. A model with no residual block (an MLP, a plain CNN) gets
    nothing: the component is skipped with a one-line note and the callback does nothing else. Everything
    else is [`StochasticDepthScheduler`][lightning_reg.stochastic_depth.callback.StochasticDepthScheduler].

    Args:
        max_rate: rate of the deepest block.
        rule: depth rule.
        schedule: ``"constant"`` or ``"warmup"``.
        warmup: fraction of training for ``"warmup"``.
        branch_ends: your residual blocks: ``{block class, dotted class path or class name: name of the
            submodule whose output is added to the skip connection}``, e.g. ``{"BasicBlock1d": "bn2"}``.
        preset_name: the preset's name, for the notes.
        verbose: ``0`` silences the skip note.

    Example:
        >>> cb = PresetStochasticDepth(0.1, branch_ends={"BasicBlock1d": "bn2"})
        >>> cb.max_rate, cb.branch_ends
        (0.1, {'BasicBlock1d': 'bn2'})
    """

    def __init__(
        self,
        max_rate: float,
        rule: str = "linear",
        schedule: str = "constant",
        warmup: float = 0.0,
        branch_ends: dict[str, str] | None = None,
        preset_name: str = "custom",
        verbose: int | bool = 1,
    ) -> None:
        check_choice("schedule", schedule, ("constant", "warmup"))
        timing: dict[str, Any] = {"cutoff": warmup, "cutoff_unit": "fraction"} if schedule == "warmup" else {}
        super().__init__(
            max_rate=max_rate, rule=rule, schedule=schedule, scale_model_rates=True, verbose=verbose, **timing
        )
        for key, end in (branch_ends or {}).items():
            if not isinstance(key, (str, type)) or not isinstance(end, str):
                raise TypeError(
                    "`branch_ends` must map block classes (or their names / dotted paths) to the name of the "
                    f"submodule ending the residual branch; got {key!r}: {end!r}."
                )
        self.branch_ends = dict(branch_ends or {})
        self.preset_name = check_str("preset_name", preset_name)
        self.verbose = check_verbose(verbose)
        #: True when the model had no residual block (nothing inserted, nothing scheduled).
        self.skipped = False

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.skipped = False
        if not find_drop_rate_modules(pl_module):
            ends = _branch_ends(pl_module, self.branch_ends)
            known = tuple({**DEFAULT_BRANCH_ENDS, **ends})
            if not any(isinstance(m, known) for m in pl_module.modules()):
                self.skipped = True
                say(
                    self.verbose,
                    1,
                    preset_skip_note(
                        self.preset_name,
                        "drop-path",
                        f"no residual block in {type(pl_module).__name__}"
                        + (
                            f" (branch_ends: {sorted(map(str, self.branch_ends))})"
                            if self.branch_ends
                            else ""
                        )
                        + " that it can find: torchvision BasicBlock/Bottleneck are found by type; "
                        "timm models need drop_path_rate > 0 at creation (their DropPath modules then "
                        "get the preset's rates); your own blocks need "
                        "branch_ends={BlockClass: 'last_branch_layer'}",
                    ),
                )
                return
            assert self.max_rate is not None
            # the inserted rates follow the rule up to max_rate, which scale_model_rates then keeps
            add_stochastic_depth(pl_module, self.max_rate, self.rule, branch_ends=ends)
        super().on_fit_start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.skipped:
            super().on_train_start(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.skipped:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def _default_pairs(monitor: str, mode: str) -> dict[str, tuple[str, str, str]]:
    for prefix, train in (("val_", "train_"), ("val/", "train/"), ("validation_", "train_")):
        if monitor.startswith(prefix):
            name = monitor[len(prefix) :]
            return {name: (train + name, monitor, mode)}
    raise ValueError(
        f"cannot derive the overfitting monitor's training key from monitor={monitor!r} (expected a 'val_'"
        " or 'val/' prefix); pass pairs={name: (train_key, val_key, mode)}."
    )


def _monitor_mode(monitor: str, mode: str | None) -> str:
    """Return the early-stopping mode: as given, or ``"min"`` for the default ``val_loss``; else raise.

    Example:
        >>> _monitor_mode("val_loss", None), _monitor_mode("val_acc", "max")
        ('min', 'max')
        >>> _monitor_mode("val_acc", None)
        Traceback (most recent call last):
        ...
        ValueError: `mode` is required with monitor='val_acc': 'min' if lower is better (a loss), 'max' if ...
    """
    if mode is None:
        if monitor != "val_loss":
            raise ValueError(
                f"`mode` is required with monitor={monitor!r}: 'min' if lower is better (a loss), 'max' if "
                "higher is better (an accuracy); the best weights restored are the best by it."
            )
        return "min"
    return check_choice("mode", mode, ("min", "max"))


def preset_callbacks(
    preset: str | Preset = "mild",
    *,
    monitor: str = "val_loss",
    mode: str | None = None,
    pairs: Mapping[str, tuple[str, str] | tuple[str, str, str]] | None = None,
    branch_ends: Mapping[Any, str] | None = None,
    verbose: int | bool = 1,
    **overrides: Any,
) -> list[Callback]:
    """Return the callbacks of a preset, ready for ``Trainer(callbacks=...)``.

    Returns, in this order: [`PresetSummary`][lightning_reg.presets.callbacks.PresetSummary];
    [`EarlyStopping`][lightning_reg.early_stopping.callback.EarlyStopping] on ``monitor``
    with the preset's patience and best-weights restore;
    [`OverfittingMonitor`][lightning_reg.overfitting.callback.OverfittingMonitor] on
    ``pairs`` (default: the training twin of ``monitor``, e.g. ``train_loss`` for ``val_loss``) with the
    preset's warm-up and probe; [`GradientClipping`][lightning_reg.gradients.clipping.GradientClipping] with
    the preset's rule (absent
    when ``clipping`` is None);
    [`PresetStochasticDepth`][lightning_reg.presets.callbacks.PresetStochasticDepth] (absent when
    ``drop_path_rate`` is None or
    0).
    Pass ``RegularizedModule(preset=..., num_classes=K)`` for the module side.

    Args:
        preset: a name (``"mild"``, ``"medium"``, ``"strong"``) or a
            [`Preset`][lightning_reg.presets.registry.Preset].
        monitor: validation metric for early stopping (the restored weights are the best by it).
        mode: ``"min"`` or ``"max"`` for ``monitor``; required with any ``monitor`` but the default
            ``"val_loss"`` (``"min"``), so an accuracy is never minimised by accident.
        pairs: the overfitting monitor's ``{name: (train_key, val_key[, mode])}``.
        branch_ends: your own residual blocks for drop-path (see
            [`PresetStochasticDepth`][lightning_reg.presets.callbacks.PresetStochasticDepth]).
        verbose: ``0`` quiet, ``1`` one line per callback at fit start and the skip notes, ``2`` details.
        **overrides: preset components to change, e.g. ``patience=40``; ``clipping=None`` and
            ``drop_path_rate=None`` switch those components off.

    Returns:
        The callbacks.

    Raises:
        ValueError: an unknown preset, a bad component value, or a ``monitor`` without ``val_`` prefix and
            no ``pairs``.

    Example:
        >>> cbs = preset_callbacks("strong", patience=40, clipping=None)
        >>> [type(cb).__name__ for cb in cbs], cbs[1].patience
        (['PresetSummary', 'EarlyStopping', 'OverfittingMonitor', 'PresetStochasticDepth'], 40)
        >>> [type(cb).__name__ for cb in preset_callbacks("strong", clipping=None, drop_path_rate=None)]
        ['PresetSummary', 'EarlyStopping', 'OverfittingMonitor']
    """
    p = get_preset(preset, **overrides)
    check_str("monitor", monitor)
    mode = _monitor_mode(monitor, mode)
    v = check_verbose(verbose)
    resolved_pairs: dict[str, tuple[str, str] | tuple[str, str, str]] = dict(
        pairs if pairs is not None else _default_pairs(monitor, mode)
    )
    callbacks: list[Callback] = [
        PresetSummary(p, verbose=v),
        EarlyStopping(monitor=monitor, mode=mode, patience=p.patience, restore_best_weights=True, verbose=v),
        OverfittingMonitor(
            pairs=resolved_pairs,
            warmup=p.overfitting_warmup,
            probe=p.overfitting_probe,
            hint=overfitting_hint(p),
            verbose=v,
        ),
    ]
    if p.clipping is not None:
        if p.clipping == "norm":
            callbacks.append(GradientClipping(algorithm=p.clipping, max_norm=p.clip_max_norm, verbose=v))
        else:
            callbacks.append(GradientClipping(algorithm=p.clipping, verbose=v))
    if p.drop_path_rate:  # None is stored as 0.0: off
        callbacks.append(
            PresetStochasticDepth(
                p.drop_path_rate,
                rule=p.drop_path_rule,
                schedule=p.drop_path_schedule,
                warmup=p.drop_path_warmup,
                branch_ends=dict(branch_ends) if branch_ends else None,
                preset_name=p.name,
                verbose=v,
            )
        )
    return callbacks


def preset_config(
    preset: str | Preset = "mild",
    *,
    monitor: str = "val_loss",
    mode: str | None = None,
    pairs: Mapping[str, tuple[str, str] | tuple[str, str, str]] | None = None,
    branch_ends: Mapping[str, str] | None = None,
    verbose: int = 1,
    **overrides: Any,
) -> str:
    """Write a preset as a LightningCLI config fragment (YAML): the model's ``preset`` and the callbacks.

    Use it with ``--config your.yaml --config preset.yaml`` (the fragment's ``trainer.callbacks`` replaces
    the list of an earlier config; its ``weight_decay: null`` selects the preset's weight decay over an
    earlier config's) or paste it. ``python -m lightning_reg.presets medium`` prints it. The model class
    must take ``preset`` and ``weight_decay`` arguments and pass them to ``RegularizedModule``; override
    the module side there (``--model.init_args.weight_decay=0.01``) and the Trainer side with
    ``overrides`` here.

    Args:
        preset: the name of a preset.
        monitor: validation metric for early stopping.
        mode: ``"min"`` or ``"max"``.
        pairs: the overfitting monitor's pairs.
        branch_ends: ``{block class name or dotted path: branch end}`` for drop-path.
        verbose: the callbacks' verbosity.
        **overrides: Trainer-side components to change (patience, clipping, drop-path, monitor settings).

    Returns:
        The YAML text.

    Raises:
        ValueError: an override of a module-side component (weight decay, smoothing, mixing).

    Example:
        >>> print(preset_config("mild").splitlines()[3])
        model:
    """
    if not isinstance(preset, str):
        raise TypeError(
            f"`preset` must be the name of a preset, one of {list(PRESET_NAMES)}; got {preset!r}."
        )
    module_side = sorted(set(overrides) & set(_MODULE_SIDE))
    if module_side:
        raise ValueError(
            f"{module_side} belong to the module side: override them in the model's init_args "
            "(weight_decay) or with a batch_mixer, not in the callbacks' fragment."
        )
    p = get_preset(preset, **overrides)
    cbs = preset_callbacks(
        p, monitor=monitor, mode=mode, pairs=pairs, branch_ends=branch_ends, verbose=verbose
    )
    named = not overrides
    lines = [
        f"# lightning-reg preset {p.name!r}"
        + ("" if named else " (with overrides)")
        + f": {p.summary}".rstrip(": "),
        "# " + describe_preset(p),
        "# Use: --config <your config> --config <this file> (this trainer.callbacks replaces earlier lists).",
        "model:",
        "  init_args:",
        f"    preset: {p.name}",
        "    weight_decay: null  # null: the preset's",
        "trainer:",
        "  callbacks:",
    ]
    for cb in cbs:
        package = type(cb).__module__.rsplit(".", 1)[0]  # the package that lists the class publicly
        lines.append(f"    - class_path: {package}.{type(cb).__name__}")
        args = _init_args(cb, p)
        if args:
            lines.append("      init_args:")
            lines += [f"        {k}: {_yaml(v)}" for k, v in args.items()]
    return "\n".join(lines) + "\n"


def _init_args(cb: Callback, p: Preset) -> dict[str, Any]:
    if isinstance(cb, PresetSummary):
        return {"preset": p.name, "verbose": cb.verbose}
    if isinstance(cb, EarlyStopping):
        return {
            "monitor": cb.monitor,
            "mode": cb.mode,
            "patience": cb.patience,
            "restore_best_weights": True,
            "verbose": cb.verbose,
        }
    if isinstance(cb, OverfittingMonitor):
        return {
            "pairs": {k: list(v) for k, v in cb.pairs.items()},
            "warmup": cb.warmup,
            "probe": cb.probe,
            "hint": json.dumps(cb.hint),  # a JSON string is a YAML scalar (the hint holds ': ' and quotes)
            "verbose": cb.verbose,
        }
    if isinstance(cb, GradientClipping):
        out: dict[str, Any] = {"algorithm": cb.algorithm}
        if cb.algorithm == "norm":
            out["max_norm"] = p.clip_max_norm
        out["verbose"] = cb.verbose
        return out
    if isinstance(cb, PresetStochasticDepth):
        out = {"max_rate": cb.max_rate, "rule": cb.rule, "schedule": cb.schedule}
        if cb.schedule == "warmup":
            out["warmup"] = cb.cutoff
        if cb.branch_ends:
            out["branch_ends"] = cb.branch_ends
        out["preset_name"] = cb.preset_name
        out["verbose"] = cb.verbose
        return out
    raise TypeError(f"no config for {type(cb).__name__}")  # pragma: no cover


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)
