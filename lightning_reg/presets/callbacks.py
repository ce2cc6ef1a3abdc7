"""The Trainer side of a preset: early stopping with restore, the overfitting monitor, clipping, drop-path.

``preset_callbacks("medium")`` returns the callbacks a preset asks for; the module side (weight decay on
the decay group, label smoothing, Mixup / CutMix) comes from ``RegularizedModule(preset="medium",
num_classes=K)``. [`preset_config`][lightning_reg.presets.callbacks.preset_config] writes the same callbacks
as a LightningCLI config fragment.

Example:
    >>> [type(cb).__name__ for cb in preset_callbacks("medium")]  # doctest: +NORMALIZE_WHITESPACE
    ['PresetSummary', 'PresetEarlyStopping', 'OverfittingMonitor', 'GradientClipping',
     'PresetStochasticDepth']
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from lightning_reg._shared.validation import (
    check_bool,
    check_choice,
    check_int,
    check_mode,
    check_number,
    check_rate,
    check_str,
)
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
    BranchEnd,
    add_stochastic_depth,
    find_drop_rate_modules,
    sequence_first_layers,
)

__all__ = [
    "PresetEarlyStopping",
    "PresetStochasticDepth",
    "PresetSummary",
    "planned_validation_checks",
    "preset_callbacks",
    "preset_config",
]

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


def _branch_end_names(key: object, end: object) -> BranchEnd:
    """Check one ``branch_ends`` entry; a list of names (from YAML) becomes a tuple."""
    names = tuple(end) if isinstance(end, list) else end
    parts = (names,) if isinstance(names, str) else names
    if (
        not isinstance(key, (str, type))
        or not isinstance(parts, tuple)
        or not parts
        or not all(isinstance(n, str) and n for n in parts)
    ):
        raise TypeError(
            "`branch_ends` must map block classes (or their names / dotted paths) to the name of the "
            "submodule ending the residual branch, or a list of names (one per branch); "
            f"got {key!r}: {end!r}."
        )
    return parts[0] if isinstance(names, str) else parts


def _branch_ends(
    model: nn.Module, branch_ends: Mapping[Any, BranchEnd] | None
) -> dict[type[nn.Module], BranchEnd]:
    """``{block type: branch end}`` from types, dotted class paths or bare class names found in ``model``."""
    out: dict[type[nn.Module], BranchEnd] = {}
    for key, end in (branch_ends or {}).items():
        end = _branch_end_names(key, end)
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
        # a bare class name matches the model's modules of that class name
        found = {type(m) for m in model.modules() if type(m).__name__ == key}
        if not found:
            classes = sorted({type(m).__name__ for m in model.modules()})
            close = difflib.get_close_matches(key, classes, n=3)
            raise ValueError(
                f"`branch_ends`: {type(model).__name__} has no module of class {key!r}"
                + (f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; it has {classes}.")
            )
        out.update(dict.fromkeys(found, end))
    return out


def planned_validation_checks(trainer: Trainer) -> int | None:
    """Return how many validation checks the Trainer plans for this fit, or ``None`` if it has no end.

    Read when training starts (it needs ``num_training_batches``): the batches of ``max_epochs`` epochs,
    capped by ``max_steps``, divided into checks by ``check_val_every_n_epoch`` and ``val_check_interval``.

    Args:
        trainer: the Trainer (its training data already set up).

    Returns:
        The number of validation checks, at least 1; ``None`` for a fit without a planned end.

    Example:
        >>> from types import SimpleNamespace
        >>> t = SimpleNamespace(num_training_batches=10, max_epochs=40, max_steps=-1,
        ...                     accumulate_grad_batches=1, val_check_batch=10, check_val_every_n_epoch=2)
        >>> planned_validation_checks(t)
        20
    """
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return None
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    total = epochs * batches if epochs is not None else None
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        by_steps = trainer.max_steps * trainer.accumulate_grad_batches
        total = by_steps if total is None else min(total, by_steps)
    if total is None:
        return None
    every = trainer.val_check_batch
    if every is None or not math.isfinite(every) or every <= 0:
        every = batches
    if trainer.check_val_every_n_epoch is None:  # checks every `val_check_interval` batches, across epochs
        return max(1, int(total // every))
    per_epoch = max(1, int(batches // every))
    return max(1, int(total // batches) // trainer.check_val_every_n_epoch * per_epoch)


#: The fewest checks a fractional patience waits (Lightning's default patience): a quarter of a 5-epoch run
#: would otherwise stop after one check without improvement.
MIN_FRACTION_PATIENCE = 3


class PresetEarlyStopping(EarlyStopping):
    """Early stopping of a preset: a patience given as a fraction of the planned validation checks.

    Everything else is [`EarlyStopping`][lightning_reg.early_stopping.callback.EarlyStopping]. With
    ``patience_fraction`` the patience in checks is ``max(min(3, planned), round(patience_fraction *
    planned))`` (at least Lightning's default of 3 checks, or every planned check on a shorter run), where
    ``planned`` is what
    [`planned_validation_checks`][lightning_reg.presets.callbacks.planned_validation_checks] reads from the
    Trainer when training starts; the same preset then waits a quarter of a 40-epoch run
    or a quarter of a 150-epoch run, where a fixed count is too short for one or too long for the other.
    A resumed fit resolves the same value (it depends on the Trainer's settings only).

    Args:
        monitor: the validation metric.
        mode: ``"min"`` or ``"max"``.
        patience: checks without improvement before stopping, when ``patience_fraction`` is ``None``.
        patience_fraction: fraction of the planned checks, in ``(0, 1)``; ``None``: ``patience`` checks.
        restore_best_weights: put the best weights back when training ends.
        verbose: ``0`` quiet, ``1`` one line when training starts, ``2`` details.
        **kwargs: [`EarlyStopping`][lightning_reg.early_stopping.callback.EarlyStopping]'s arguments.

    Raises:
        ValueError: ``patience_fraction`` outside ``(0, 1)``; at train start, a Trainer with no planned end
            (neither ``max_epochs`` nor ``max_steps``).

    Example:
        >>> es = PresetEarlyStopping("val_acc", mode="max", patience_fraction=0.25)
        >>> es.patience_fraction, es.restore_best_weights
        (0.25, True)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 3,
        patience_fraction: float | None = None,
        restore_best_weights: bool = True,
        verbose: int | bool = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            monitor,
            mode=mode,
            patience=patience,
            restore_best_weights=restore_best_weights,
            verbose=verbose,
            **kwargs,
        )
        if patience_fraction is not None:
            patience_fraction = check_number(
                "patience_fraction", patience_fraction, low=0.0, high=1.0, low_open=True, high_open=True
            )
        self.patience_fraction = patience_fraction
        self._planned: int | None = None

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.patience_fraction is None:
            super().on_fit_start(trainer, pl_module)
        # else: the line is said at train start, with the patience resolved

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.patience_fraction is None:
            return
        planned = planned_validation_checks(trainer)
        if planned is None:
            raise ValueError(
                f"PresetEarlyStopping(patience_fraction={self.patience_fraction}) needs a planned end of "
                "training (Trainer max_epochs or max_steps) to turn the fraction into a number of checks; "
                "set one, or give the preset an int patience (preset_callbacks(..., patience=20))."
            )
        self.patience = max(min(MIN_FRACTION_PATIENCE, planned), round(self.patience_fraction * planned))
        self._planned = planned
        super().on_fit_start(trainer, pl_module)  # the usual line, with the resolved patience

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # checked here, before the overfitting monitor's own check of its keys, to name the preset's choice
        metrics = trainer.callback_metrics
        in_fit = trainer.state.fn == "fit"  # the sanity check's metrics too: the first check it can make
        if self.strict and in_fit and self.monitor not in metrics:
            why = (
                " (with `num_classes`, the presets follow the validation accuracy of a classifier)"
                if self.monitor == "val_acc"
                else ""
            )
            raise MisconfigurationException(
                f"PresetEarlyStopping: the preset's early stopping follows {self.monitor!r}{why}, which "
                f"validation did not log. Logged keys: {sorted(metrics)}. Log it in `validation_step` with "
                "`self.log`, or pass `preset_callbacks(..., monitor=<a logged key>)`."
            )
        super().on_validation_end(trainer, pl_module)

    @override
    def _patience_text(self) -> str:
        text = super()._patience_text()
        if self.patience_fraction is None:
            return text
        raised = self._planned is not None and self.patience > round(self.patience_fraction * self._planned)
        floor = f", raised to at least {MIN_FRACTION_PATIENCE}, or all checks if fewer" if raised else ""
        return f"{text} ({self.patience_fraction:g} of the {self._planned} planned checks{floor})"


class PresetStochasticDepth(StochasticDepthScheduler):
    """Drop-path of a preset: insert DropPath into residual blocks if the model has none, then schedule it.

    At fit start: if the model already holds drop-path modules (our ``DropPath``, torchvision's
    ``StochasticDepth``, timm's ``DropPath``) and some rate is above 0, the model's own depth profile is
    kept and scaled so that its deepest rate becomes ``max_rate`` (the scheduler's
    ``scale_model_rates=True``: a timm model built with ``drop_path_rate=d`` gets timm's linear rule up to
    ``max_rate`` over all its blocks, although timm builds no module for the first block at rate 0); with
    all their rates at 0 the depth rule sets them; otherwise
    [`add_stochastic_depth`][lightning_reg.stochastic_depth.layers.add_stochastic_depth]
    inserts DropPath into every residual block it knows (torchvision's ResNet and ViT blocks, torch's
    transformer layers built with ``batch_first=True``, plus
    ``branch_ends``), at the depth rule's rates. A model with no residual block (an MLP, a plain CNN) gets
    drop-path's stand-in instead, when ``dropout_rate > 0`` and the model has dropout modules (``nn.Dropout``
    and its family, at any rate, 0 included): each is set to ``dropout_rate`` on the same time schedule, with
    a one-line note. A model with neither is skipped with a one-line note and the callback does nothing
    else. Everything else is
    [`StochasticDepthScheduler`][lightning_reg.stochastic_depth.callback.StochasticDepthScheduler].

    Args:
        max_rate: rate of the deepest block.
        rule: depth rule.
        schedule: ``"constant"`` or ``"warmup"``.
        warmup: fraction of training for ``"warmup"``.
        branch_ends: your residual blocks: ``{block class, dotted class path or class name: name of the
            submodule whose output is added to the skip connection}``, e.g. ``{"BasicBlock1d": "bn2"}``.
        dropout_rate: rate of the model's dropout modules when it has no residual block (``0``: none).
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
        branch_ends: Mapping[Any, BranchEnd] | None = None,
        dropout_rate: float = 0.0,
        preset_name: str = "custom",
        verbose: int | bool = 1,
    ) -> None:
        check_choice("schedule", schedule, ("constant", "warmup"))
        stand_in = check_rate("dropout_rate", dropout_rate)
        timing: dict[str, Any] = {"cutoff": warmup, "cutoff_unit": "fraction"} if schedule == "warmup" else {}
        super().__init__(
            max_rate=max_rate, rule=rule, schedule=schedule, scale_model_rates=True, verbose=verbose, **timing
        )
        self.branch_ends = {key: _branch_end_names(key, end) for key, end in (branch_ends or {}).items()}
        #: The dropout stand-in's rate (the scheduler's ``dropout_rate``, used only without residual blocks).
        self.dropout_rate: float = stand_in
        self.preset_name = check_str("preset_name", preset_name)
        self.verbose = check_verbose(verbose)
        #: True when the model had no residual block and no dropout to stand in (nothing scheduled).
        self.skipped = False
        #: True when the model had no residual block and its dropout modules are scheduled instead.
        self.dropout_instead = False

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.skipped = self.dropout_instead = False
        model = type(pl_module).__name__
        has_drop_path = bool(find_drop_rate_modules(pl_module))
        ends = _branch_ends(pl_module, self.branch_ends)
        known = tuple({**DEFAULT_BRANCH_ENDS, **ends})
        sequence_first = [] if has_drop_path else sequence_first_layers(pl_module)
        if sequence_first:
            say(
                self.verbose,
                1,
                preset_skip_note(
                    self.preset_name,
                    "drop-path",
                    f"{model}'s torch transformer layers {sequence_first[:3]} were built with"
                    " batch_first=False: their batch dimension is the second, so a per-sample drop would"
                    " drop sequence positions; build them with batch_first=True to give them drop-path",
                ),
            )
        elif has_drop_path or any(isinstance(m, known) for m in pl_module.modules()):
            if not self.max_rate:  # a preset with dropout_rate only: residual models keep their structure
                self.skipped = True
                say(self.verbose, 1, preset_skip_note(self.preset_name, "drop-path", f"rate 0 for {model}"))
                return
            if not has_drop_path:
                # the inserted rates follow the rule up to max_rate, which scale_model_rates then keeps
                add_stochastic_depth(pl_module, self.max_rate, self.rule, branch_ends=ends)
            super().on_fit_start(trainer, pl_module)
            if not has_drop_path:  # inserted for this fit: at its end they go back to 0, as the model was
                self._original_rates[: self._num_drop_path] = [0.0] * self._num_drop_path
            return
        dropouts = find_drop_rate_modules(pl_module, include_dropout=True)
        if self.dropout_rate > 0 and dropouts:
            self.dropout_instead = True
            say(
                self.verbose,
                1,
                f"preset {self.preset_name!r}: no residual block"
                + (" drop-path can use" if sequence_first else " found")
                + f" in {model}, so its {len(dropouts)}"
                + (" dropout modules stand" if len(dropouts) != 1 else " dropout module stands")
                + f" in for drop-path, at rate {self.dropout_rate:g}"
                f" ({self.timing.schedule_name} schedule). If it has residual blocks, let drop-path find"
                " them: timm models built with drop_path_rate > 0, torchvision ResNet/ViT blocks, torch"
                " transformer layers (batch_first=True), or"
                " branch_ends={BlockClass: 'last_branch_layer'} for your own.",
            )
            super().on_fit_start(trainer, pl_module)
            return
        self.skipped = True
        missing = "no residual block" + (" and no dropout module" if self.dropout_rate > 0 else "")
        say(
            self.verbose,
            1,
            preset_skip_note(
                self.preset_name,
                "drop-path" + (" and its dropout stand-in" if self.dropout_rate > 0 else ""),
                f"{missing} in {model}"
                + (f" (branch_ends: {sorted(map(str, self.branch_ends))})" if self.branch_ends else "")
                + " that it can find: torchvision ResNet/ViT blocks and torch transformer layers are found by"
                " type; "
                "timm models need drop_path_rate > 0 at creation (their DropPath modules then "
                "get the preset's rates); your own blocks need "
                "branch_ends={BlockClass: 'last_branch_layer'}",
            ),
        )

    @override
    def _discover(self, model: nn.Module) -> None:
        if not self.dropout_instead:
            super()._discover(model)
            return
        self._found = find_drop_rate_modules(model, include_dropout=True)
        self._num_drop_path = 0
        self._original_rates = [float(getattr(f.module, f.attr)) for f in self._found]
        self._target_rates = [self.dropout_rate] * len(self._found)

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


def _default_monitor(
    monitor: str | None, mode: str | None, num_classes: int | None
) -> tuple[str, str | None]:
    """Return what early stopping follows when ``monitor`` is not given: ``val_acc`` (max) for a classifier.

    Example:
        >>> _default_monitor(None, None, 10), _default_monitor(None, None, None)
        (('val_acc', 'max'), ('val_loss', None))
    """
    if num_classes is not None:
        check_int("num_classes", num_classes, low=2)
    if monitor is not None:
        return monitor, mode
    if num_classes is None:
        return "val_loss", mode
    return "val_acc", mode if mode is not None else "max"


def preset_callbacks(
    preset: str | Preset = "mild",
    *,
    monitor: str | None = None,
    mode: str | None = None,
    num_classes: int | None = None,
    pairs: Mapping[str, tuple[str, str] | tuple[str, str, str]] | None = None,
    branch_ends: Mapping[Any, BranchEnd] | None = None,
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
        monitor: validation metric for early stopping (the restored weights are the best by it). ``None``
            (default): ``"val_acc"`` (``"max"``) with ``num_classes``, the accuracy a classifier's user
            reports (its loss turns up from overconfidence while its accuracy still improves), else
            ``"val_loss"``. The module must log it (early stopping says so at the first check otherwise).
        mode: ``"min"`` or ``"max"`` for ``monitor``; required with any ``monitor`` but ``"val_loss"``
            (``"min"``) and the ``num_classes`` default, so an accuracy is never minimised by accident.
        num_classes: the number of classes of a classifier (as given to ``RegularizedModule``).
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
        (['PresetSummary', 'PresetEarlyStopping', 'OverfittingMonitor', 'PresetStochasticDepth'], 40)
        >>> off = dict(clipping=None, drop_path_rate=None, dropout_rate=0)
        >>> [type(cb).__name__ for cb in preset_callbacks("strong", **off)]
        ['PresetSummary', 'PresetEarlyStopping', 'OverfittingMonitor']
    """
    p = get_preset(preset, **overrides)
    monitor, mode = _default_monitor(monitor, mode, num_classes)
    check_str("monitor", monitor)
    mode = check_mode(mode, "monitor", monitor, "; the best weights restored are the best by it")
    v = check_verbose(verbose)
    resolved_pairs: dict[str, tuple[str, str] | tuple[str, str, str]] = dict(
        pairs if pairs is not None else _default_pairs(monitor, mode)
    )
    callbacks: list[Callback] = [
        PresetSummary(p, verbose=v),
        PresetEarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=p.patience if isinstance(p.patience, int) else 0,
            patience_fraction=p.patience if isinstance(p.patience, float) else None,
            verbose=v,
        ),
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
    if p.drop_path_rate or p.dropout_rate:  # None is stored as 0.0: off
        callbacks.append(
            PresetStochasticDepth(
                p.drop_path_rate or 0.0,
                rule=p.drop_path_rule,
                schedule=p.drop_path_schedule,
                warmup=p.drop_path_warmup,
                branch_ends=dict(branch_ends) if branch_ends else None,
                dropout_rate=p.dropout_rate,
                preset_name=p.name,
                verbose=v,
            )
        )
    return callbacks


def preset_config(
    preset: str | Preset = "mild",
    *,
    monitor: str | None = None,
    mode: str | None = None,
    num_classes: int | None = None,
    pairs: Mapping[str, tuple[str, str] | tuple[str, str, str]] | None = None,
    branch_ends: Mapping[str, BranchEnd] | None = None,
    verbose: int = 1,
    fixed_model: bool = False,
    **overrides: Any,
) -> str:
    """Write a preset as a LightningCLI config fragment (YAML): the model's ``preset`` and the callbacks.

    Use it with ``--config your.yaml --config preset.yaml`` (the fragment's ``trainer.callbacks`` replaces
    the list of an earlier config; its ``weight_decay: null`` selects the preset's weight decay over an
    earlier config's) or paste it. ``python -m lightning_reg.presets medium`` prints it. The model class
    must take ``preset`` and ``weight_decay`` arguments and pass them to ``RegularizedModule``; override
    the module side there (``--model.init_args.weight_decay=0.01``) and the Trainer side with
    ``overrides`` here. The model's keys go under ``model.init_args`` (a LightningCLI whose config names the
    model's ``class_path``); ``fixed_model=True`` puts them under ``model`` itself, for
    ``LightningCLI(MyModel)`` with one model class, which refuses ``init_args``.

    Args:
        preset: the name of a preset.
        monitor: validation metric for early stopping (default as in ``preset_callbacks``).
        mode: ``"min"`` or ``"max"``.
        num_classes: the number of classes: early stopping then follows ``val_acc`` by default.
        pairs: the overfitting monitor's pairs.
        branch_ends: ``{block class name or dotted path: branch end}`` for drop-path.
        verbose: the callbacks' verbosity.
        fixed_model: write ``model.preset`` instead of ``model.init_args.preset`` (a LightningCLI built
            with one model class).
        **overrides: Trainer-side components to change (patience, clipping, drop-path, monitor settings).

    Returns:
        The YAML text.

    Raises:
        ValueError: an override of a module-side component (weight decay, smoothing, mixing).

    Example:
        >>> print(preset_config("mild").splitlines()[4])
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
        p,
        monitor=monitor,
        mode=mode,
        num_classes=num_classes,
        pairs=pairs,
        branch_ends=branch_ends,
        verbose=verbose,
    )
    check_bool("fixed_model", fixed_model)
    indent = "  " if fixed_model else "    "
    named = not overrides
    lines = [
        f"# lightning-reg preset {p.name!r}"
        + ("" if named else " (with overrides)")
        + f": {p.summary}".rstrip(": "),
        "# " + describe_preset(p),
        "# Use: --config <your config> --config <this file> (this trainer.callbacks replaces earlier lists).",
        *(
            []
            if fixed_model
            else ["# For LightningCLI(MyModel), one model class: lightning_reg.presets --fixed-model"]
        ),
        "model:",
        *([] if fixed_model else ["  init_args:"]),
        f"{indent}preset: {p.name}",
        f"{indent}weight_decay: null  # null: the preset's",
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
    if isinstance(cb, PresetEarlyStopping):
        out: dict[str, Any] = {"monitor": cb.monitor, "mode": cb.mode}
        if cb.patience_fraction is not None:
            out["patience_fraction"] = cb.patience_fraction
        else:
            out["patience"] = cb.patience
        out["verbose"] = cb.verbose
        return out
    if isinstance(cb, OverfittingMonitor):
        return {
            "pairs": {k: list(v) for k, v in cb.pairs.items()},
            "warmup": cb.warmup,
            "probe": cb.probe,
            "hint": json.dumps(cb.hint),  # a JSON string is a YAML scalar (the hint holds ': ' and quotes)
            "verbose": cb.verbose,
        }
    if isinstance(cb, GradientClipping):
        out = {"algorithm": cb.algorithm}
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
        if cb.dropout_rate:
            out["dropout_rate"] = cb.dropout_rate
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
