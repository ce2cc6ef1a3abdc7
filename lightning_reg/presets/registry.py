"""Named regularization presets: what each one contains, how to override it, and which one to try next.

A [`Preset`][lightning_reg.presets.registry.Preset] is plain data: one value per component of the library
(weight decay on the decay
group, label smoothing, Mixup / CutMix probabilities, drop-path rate and schedule, the clipping rule,
early stopping with best-weights restore and the overfitting monitor). ``PRESETS`` holds the three
named ones, ordered from the weakest to the strongest; their values were chosen on validation data by
``benchmarks/panel.py`` (the procedure and the numbers are in the documentation's presets
page). Nothing here imports Lightning: the callbacks are built by
[`lightning_reg.presets.callbacks.preset_callbacks`][lightning_reg.presets.callbacks.preset_callbacks] and the
module side by
``RegularizedModule(preset=...)``.

Example:
    >>> p = get_preset("medium", label_smoothing=0.0)  # any component can be overridden
    >>> p.name, p.label_smoothing, next_preset("mild")
    ('medium', 0.0, 'medium')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_reg._shared.validation import check_choice, check_int, check_number, check_rate, check_str

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "Preset",
    "describe_preset",
    "get_preset",
    "next_preset",
    "overfitting_hint",
    "preset_skip_note",
]

_CLIPPING = ("zclip", "norm", "agc")
_SCHEDULES = ("constant", "warmup")


@dataclass(frozen=True)
class Preset:
    """One named bundle of regularization settings (plain data, validated at construction).

    The weight decay is *decoupled* weight decay (``torch.optim.AdamW``, the default optimizer of
    [`RegularizedModule`][lightning_reg.module.regularized.RegularizedModule]) applied to the decay group
    only: weights of convolutions,
    linear layers and embeddings; biases and normalization parameters are never decayed. With an
    optimizer whose weight decay is an L2 term in the gradient (SGD, Adam), the value means something
    else, so the module skips it with a note unless ``weight_decay`` is given explicitly.

    Mixup and CutMix are per-batch probabilities (each batch is mixed by Mixup with probability
    ``mixup_prob``, by CutMix with probability ``cutmix_prob``, else left alone); label smoothing applies
    to every training target.

    Args:
        name: the preset's name.
        weight_decay: decoupled weight decay of the decay group, ``>= 0``.
        label_smoothing: label-smoothing ``eps`` in ``[0, 1)``.
        mixup_prob: probability that a training batch is mixed by Mixup.
        mixup_alpha: Beta parameter of Mixup's weight, ``> 0``.
        cutmix_prob: probability that a training batch is mixed by CutMix (images and sequences only).
        cutmix_alpha: Beta parameter of CutMix's area, ``> 0``.
        drop_path_rate: drop-path rate of the deepest residual block; ``0`` or ``None`` disables it (as
            ``clipping=None`` disables clipping; stored as ``0.0``).
        drop_path_rule: depth rule of the rates (``"linear"``: timm's ``linspace(0, rate, depth)``).
        drop_path_schedule: ``"constant"``, or ``"warmup"`` (rates rise linearly over the first
            ``drop_path_warmup`` fraction of training).
        drop_path_warmup: fraction of training for the ``"warmup"`` schedule, in ``[0, 1]``.
        dropout_rate: drop-path's stand-in for a model without residual blocks (an MLP, a plain CNN, a
            model whose residual blocks the library cannot find): the rate every dropout module of the
            model is set to, on the same time schedule as drop-path; ``0`` leaves dropout alone. A model
            with neither gets no structural noise, with a note (where to add dropout is the model's call).
        clipping: ``"zclip"`` (z-score of the gradient norm against its running statistics), ``"norm"``
            (fixed ``clip_max_norm``), ``"agc"`` or ``None``.
        clip_max_norm: the threshold of ``clipping="norm"``.
        patience: early-stopping patience (the best weights are always restored): an ``int`` is a number
            of validation checks; a ``float`` in ``(0, 1)`` is a fraction of the validation checks the
            Trainer plans (from ``max_epochs`` or ``max_steps``), resolved when training starts, so one
            preset stops a 40-epoch and a 150-epoch run at the same point of their course.
        overfitting_warmup: checks before the overfitting monitor may alert.
        overfitting_probe: fraction of the training set the overfitting monitor evaluates in eval mode
            (so mixing and drop-path do not hide the gap), or ``None`` for the logged training metrics.
        summary: one line saying what the preset is for.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a value out of range, or mixing probabilities that add up to more than 1.

    Example:
        >>> Preset("custom", weight_decay=0.02, patience=10).mixup_prob
        0.0
    """

    name: str
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    mixup_prob: float = 0.0
    mixup_alpha: float = 0.2
    cutmix_prob: float = 0.0
    cutmix_alpha: float = 1.0
    drop_path_rate: float | None = 0.0
    drop_path_rule: str = "linear"
    drop_path_schedule: str = "constant"
    drop_path_warmup: float = 0.0
    dropout_rate: float = 0.0
    clipping: str | None = "zclip"
    clip_max_norm: float = 1.0
    patience: int | float = 20
    overfitting_warmup: int = 5
    overfitting_probe: float | None = 0.25
    summary: str = ""

    def __post_init__(self) -> None:
        check_str("name", self.name)
        set_ = object.__setattr__  # frozen: normalise ints to floats once, here
        set_(self, "weight_decay", check_number("weight_decay", self.weight_decay, low=0.0))
        set_(self, "label_smoothing", check_rate("label_smoothing", self.label_smoothing))
        for key in ("mixup_prob", "cutmix_prob"):
            set_(self, key, check_number(key, getattr(self, key), low=0.0, high=1.0))
        for key in ("mixup_alpha", "cutmix_alpha"):
            set_(self, key, check_number(key, getattr(self, key), low=0.0, low_open=True))
        if self.mixup_prob + self.cutmix_prob > 1.0 + 1e-12:
            raise ValueError(
                f"`mixup_prob` + `cutmix_prob` must be <= 1 (each batch is mixed at most once); got "
                f"{self.mixup_prob!r} + {self.cutmix_prob!r}."
            )
        drop_path_rate = 0.0 if self.drop_path_rate is None else self.drop_path_rate  # None: off
        set_(self, "drop_path_rate", check_rate("drop_path_rate", drop_path_rate))
        check_str("drop_path_rule", self.drop_path_rule)
        check_choice("drop_path_schedule", self.drop_path_schedule, _SCHEDULES)
        set_(
            self,
            "drop_path_warmup",
            check_number("drop_path_warmup", self.drop_path_warmup, low=0.0, high=1.0),
        )
        if self.clipping is not None:
            check_choice("clipping", self.clipping, _CLIPPING)
        set_(self, "clip_max_norm", check_number("clip_max_norm", self.clip_max_norm, low=0.0, low_open=True))
        if isinstance(self.patience, float):
            if not 0.0 < self.patience < 1.0:
                raise ValueError(
                    f"`patience` as a float is a fraction of the planned validation checks, in (0, 1); got "
                    f"{self.patience!r} (pass an int for a number of checks)."
                )
        else:
            check_int("patience", self.patience, low=0)
        set_(self, "dropout_rate", check_rate("dropout_rate", self.dropout_rate))
        check_int("overfitting_warmup", self.overfitting_warmup, low=0)
        probe = check_number(
            "overfitting_probe", self.overfitting_probe, low=0.0, high=1.0, low_open=True, none_ok=True
        )
        set_(self, "overfitting_probe", probe)
        if not isinstance(self.summary, str):
            raise TypeError(f"`summary` must be a str; got {self.summary!r}.")

    def replace(self, **overrides: Any) -> Preset:
        """Return a copy with some components changed (validated like the original).

        Args:
            **overrides: field name -> new value.

        Returns:
            The new [`Preset`][lightning_reg.presets.registry.Preset] (same name unless ``name`` is given).

        Raises:
            TypeError: an unknown field name, or a value of the wrong type.

        Example:
            >>> PRESETS["mild"].replace(patience=50).patience
            50
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"unknown preset component(s) {unknown}; valid: {sorted(fields - {'name', 'summary'})}."
            )
        return dataclasses.replace(self, **overrides)

    @property
    def mixes(self) -> bool:
        """Whether training targets become soft: label smoothing, Mixup or CutMix is on.

        Example:
            >>> PRESETS["mild"].replace(label_smoothing=0.0).mixes
            False
        """
        return self.label_smoothing > 0 or self.mixup_prob > 0 or self.cutmix_prob > 0

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (for logs, result files and YAML).

        Example:
            >>> PRESETS["strong"].as_dict()["name"]
            'strong'
        """
        return dataclasses.asdict(self)


# The three presets, weakest first. Values chosen by benchmarks/panel.py on validation data
# only; see docs/techniques/presets.md for the procedure and every setting's numbers.
PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="mild",
            weight_decay=0.1,
            label_smoothing=0.1,
            drop_path_rate=0.1,
            dropout_rate=0.2,
            patience=0.25,
            summary="a safe default: within seed noise of no regularization, or better, in every setting",
        ),
        Preset(
            name="medium",
            weight_decay=0.1,
            label_smoothing=0.1,
            drop_path_rate=0.15,
            dropout_rate=0.3,
            patience=0.25,
            summary="the validation loss turns up, or the train/validation gap keeps growing",
        ),
        Preset(
            name="strong",
            weight_decay=0.2,
            label_smoothing=0.1,
            mixup_prob=0.3,
            drop_path_rate=0.2,
            dropout_rate=0.4,
            patience=0.25,
            summary="little data for the model: the overfitting monitor still alerts under 'medium'",
        ),
    )
}


#: The named presets, from the weakest to the strongest.
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_preset(preset: str | Preset, **overrides: Any) -> Preset:
    """Return a named preset (or a given one), with optional overrides.

    Args:
        preset: a name in ``PRESET_NAMES`` or a [`Preset`][lightning_reg.presets.registry.Preset].
        **overrides: components to change, e.g. ``weight_decay=0.01``.

    Returns:
        The [`Preset`][lightning_reg.presets.registry.Preset].

    Raises:
        ValueError: an unknown name.
        TypeError: neither a str nor a Preset, or an unknown component name.

    Example:
        >>> get_preset("strong").drop_path_rate > get_preset("mild").drop_path_rate
        True
    """
    if isinstance(preset, Preset):
        base = preset
    elif isinstance(preset, str):
        check_choice("preset", preset, PRESET_NAMES)
        base = PRESETS[preset]
    else:
        raise TypeError(f"`preset` must be one of {list(PRESET_NAMES)} or a Preset; got {preset!r}.")
    return base.replace(**overrides) if overrides else base


def next_preset(current: str | Preset | None) -> str | None:
    """Return the next stronger named preset: none -> ``"mild"`` -> ``"medium"`` -> ``"strong"`` -> none.

    Args:
        current: the preset in use (a name, a [`Preset`][lightning_reg.presets.registry.Preset] whose name is
            one of the named ones), or
            ``None`` when none is.

    Returns:
        The name to try next, or ``None`` after the strongest (or for a custom preset).

    Example:
        >>> [next_preset(p) for p in (None, "mild", "medium", "strong")]
        ['mild', 'medium', 'strong', None]
    """
    if current is None:
        return PRESET_NAMES[0]
    name = current.name if isinstance(current, Preset) else current
    if name not in PRESET_NAMES:
        return None
    i = PRESET_NAMES.index(name)
    return PRESET_NAMES[i + 1] if i + 1 < len(PRESET_NAMES) else None


def overfitting_hint(current: str | Preset | None) -> str:
    """One sentence for an overfitting alert: which preset to try next (or what to do after the last).

    Args:
        current: the preset in use, or ``None``.

    Returns:
        The hint.

    Example:
        >>> overfitting_hint("mild")[:60]
        "Try the next stronger preset, 'medium': RegularizedModule(pr"
    """
    nxt = next_preset(current)
    name = current.name if isinstance(current, Preset) else current
    how = f"RegularizedModule(preset={nxt!r}) and preset_callbacks({nxt!r})"
    finder = (
        "let the regularization finder choose on your validation data: "
        "lightning_reg.find.find_regularization (python -m lightning_reg.find; extra [find])"
    )
    if current is None:
        return f"Try the {nxt!r} preset: {how}; or {finder}."
    if nxt is not None:
        return f"Try the next stronger preset, {nxt!r}: {how}."
    if name in PRESET_NAMES:
        return (
            f"{name!r} is the strongest preset: {finder}; or get more data or use a smaller model, or raise "
            "single components (e.g. preset_callbacks('strong', drop_path_rate=0.3))."
        )
    return (
        f"The custom preset {name!r} is not one of {list(PRESET_NAMES)}: {finder}; or raise its components "
        "(weight decay, mixing, drop-path), get more data or use a smaller model."
    )


def describe_preset(preset: Preset) -> str:
    """One line listing every component of a preset (what ``verbose=1`` prints at fit start).

    Example:
        >>> line = describe_preset(Preset("x", weight_decay=0.05, mixup_prob=0.5))
        >>> line[:89]
        "preset 'x': weight decay 0.05 (decay group), label smoothing off, Mixup p=0.5 (alpha 0.2)"
    """

    def onoff(value: float | None, text: str) -> str:
        return text if value is not None and value > 0 else "off"

    p = preset
    dp = onoff(
        p.drop_path_rate,
        f"{p.drop_path_rate:g} ({p.drop_path_rule}, {p.drop_path_schedule}"
        + (f" {p.drop_path_warmup:g}" if p.drop_path_schedule == "warmup" else "")
        + ")",
    )
    clip = (
        "off"
        if p.clipping is None
        else p.clipping + (f" {p.clip_max_norm:g}" if p.clipping == "norm" else "")
    )
    probe = f"probe {p.overfitting_probe:g}" if p.overfitting_probe else "logged train metrics"
    patience = (
        f"{p.patience:.0%} of the planned checks" if isinstance(p.patience, float) else f"{p.patience}"
    )
    dropout = onoff(p.dropout_rate, f"{p.dropout_rate:g}")
    return (
        f"preset {p.name!r}: weight decay {p.weight_decay:g} (decay group), "
        f"label smoothing {onoff(p.label_smoothing, f'{p.label_smoothing:g}')}, "
        f"Mixup {onoff(p.mixup_prob, f'p={p.mixup_prob:g} (alpha {p.mixup_alpha:g})')}, "
        f"CutMix {onoff(p.cutmix_prob, f'p={p.cutmix_prob:g} (alpha {p.cutmix_alpha:g})')}, "
        f"drop-path {dp} (else dropout {dropout}), clipping {clip}, "
        f"early stopping patience {patience} with restore, "
        f"overfitting monitor ({probe})"
    )


def preset_skip_note(preset: Preset | str, component: str, reason: str) -> str:
    """Return the one-line note said when a component of a preset does not apply and is skipped.

    Every part of the library that applies a preset (the module side, the callbacks) says a skipped
    component in this one form, so a user reads one kind of line whatever skipped it.

    Args:
        preset: the preset (or its name).
        component: what is skipped, e.g. ``"CutMix"``.
        reason: why, e.g. ``"inputs of shape (64, 30) have no spatial dimensions"``.

    Returns:
        The note.

    Example:
        >>> preset_skip_note("strong", "drop-path", "no residual block in MLP")
        "preset 'strong': drop-path skipped (no residual block in MLP)."
    """
    name = preset.name if isinstance(preset, Preset) else preset
    return f"preset {name!r}: {component} skipped ({reason})."
