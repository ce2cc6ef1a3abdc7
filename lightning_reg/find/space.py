"""The finder's search space: the preset ladder and the strength of every component, as one preset override.

A point of the space is a ``Candidate``: a ``Preset`` (a named preset with some components changed,
so ``get_preset(name, **overrides)`` rebuilds it), the metric early stopping watches, and optional
arguments of the model's own constructor (e.g. ``dropout``). ``suggest_candidate`` draws a candidate from any
object with Optuna's ``suggest_categorical`` / ``suggest_float`` / ``suggest_int`` methods (an Optuna
``Trial`` or ``FixedTrial``), so this module imports neither Optuna nor Lightning.

Example:
    >>> space = SearchSpace(weight_decay=(1e-3, 0.3), mixup_prob=None)
    >>> params = ladder_params(space, "medium")
    >>> params["preset"], params["weight_decay"], "mixup_prob" in params
    ('medium', 0.1, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lightning_reg import get_preset
from lightning_reg._shared.validation import check_choice, check_number, check_str
from lightning_reg.presets import PRESET_NAMES, Preset

__all__ = ["Candidate", "SearchSpace", "ladder_params", "no_regularization", "suggest_candidate"]

_CLIPPING = ("zclip", "norm", "agc", None)


class _TrialLike(Protocol):
    """What ``suggest_candidate`` needs from an Optuna trial."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...


def _check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`{name}` must be a (low, high) pair or None; got {value!r}.")
    lo = check_number(f"{name}[0]", value[0], low=low, high=high, low_open=low_open, high_open=high_open)
    hi = check_number(f"{name}[1]", value[1], low=low, high=high, low_open=low_open, high_open=high_open)
    if lo > hi:
        raise ValueError(f"`{name}` must have low <= high; got {tuple(value)!r}.")
    return (lo, hi)


@dataclass(frozen=True)
class SearchSpace:
    """What the finder searches: the presets it starts from and the range of each component.

    Every named preset in ``presets`` is run once as it is (the ladder); every other trial takes a
    preset from ``presets`` and sets each searched component to a value from its range. A component set
    to ``None`` is not searched: it keeps the preset's value. Ranges of rates are uniform, weight decay
    and ``clip_max_norm`` log-uniform, ``patience`` uniform (a fraction of the planned validation checks,
    as in the named presets).

    Args:
        presets: the preset ladder (names from ``PRESET_NAMES``), weakest first.
        weight_decay: decoupled weight decay of the decay group, log-uniform.
        label_smoothing: label-smoothing ``eps``.
        mixup_prob: probability that a batch is mixed by Mixup.
        cutmix_prob: probability that a batch is mixed by CutMix (images and sequences); off by default,
            as in the named presets. ``mixup_prob[1] + cutmix_prob[1]`` must be at most 1.
        drop_path_rate: drop-path rate of the deepest residual block (the finder drops it for models
            without a residual block it can find).
        dropout_rate: the presets' stand-in for drop-path on a model without residual blocks: the rate of
            its dropout modules (the finder drops it for models with residual blocks, and for models
            whose own ``dropout`` argument is searched in ``model_args``: that one is searched instead).
        clipping: the clipping rules to choose from (``"zclip"``, ``"norm"``, ``"agc"``, ``None`` for
            none).
        clip_max_norm: threshold range of ``clipping="norm"``, log-uniform.
        patience: early-stopping patience, as a fraction of the planned validation checks, in ``(0, 1)``.
        monitors: the metrics early stopping may watch, ``{name: "min" | "max"}``; ``None``: ``val_loss``
            and the finder's objective metric.
        model_args: float arguments of the model's constructor to search, ``{name: (low, high)}``, e.g.
            ``{"dropout": (0.0, 0.5)}``; the low end is their value under no regularization. ``None``:
            ``dropout`` in ``(0, 0.5)`` when the model takes a ``dropout`` argument, else nothing.

    Raises:
        TypeError: a range that is not a pair.
        ValueError: a value out of range, an unknown preset or clipping rule.

    Example:
        >>> SearchSpace().weight_decay, SearchSpace(clipping=("zclip", None)).clipping
        ((0.0001, 0.5), ('zclip', None))
    """

    presets: tuple[str, ...] = PRESET_NAMES
    weight_decay: tuple[float, float] | None = (1e-4, 0.5)
    label_smoothing: tuple[float, float] | None = (0.0, 0.2)
    mixup_prob: tuple[float, float] | None = (0.0, 0.8)
    cutmix_prob: tuple[float, float] | None = None
    drop_path_rate: tuple[float, float] | None = (0.0, 0.3)
    dropout_rate: tuple[float, float] | None = (0.0, 0.5)
    clipping: tuple[str | None, ...] | None = _CLIPPING
    clip_max_norm: tuple[float, float] = (0.1, 10.0)
    patience: tuple[float, float] | None = (0.1, 0.5)
    monitors: Mapping[str, str] | None = None
    model_args: Mapping[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: store normalised values once, here
        presets = tuple(self.presets)
        if not presets:
            raise ValueError(f"`presets` must name at least one of {list(PRESET_NAMES)}; got ().")
        for name in presets:
            check_choice("presets", name, PRESET_NAMES)
        if len(set(presets)) != len(presets):
            raise ValueError(f"`presets` lists a preset twice: {presets!r}.")
        set_(self, "presets", presets)
        set_(self, "weight_decay", _check_range("weight_decay", self.weight_decay, low=0.0, low_open=True))
        for key in ("label_smoothing", "drop_path_rate", "dropout_rate"):
            set_(self, key, _check_range(key, getattr(self, key), low=0.0, high=1.0, high_open=True))
        for key in ("mixup_prob", "cutmix_prob"):
            set_(self, key, _check_range(key, getattr(self, key), low=0.0, high=1.0))
        top = sum(r[1] for r in (self.mixup_prob, self.cutmix_prob) if r is not None)
        if top > 1.0 + 1e-12:
            raise ValueError(
                "`mixup_prob[1]` + `cutmix_prob[1]` must be <= 1 (each batch is mixed at most once); got "
                f"{self.mixup_prob!r} and {self.cutmix_prob!r}."
            )
        if self.clipping is not None:
            rules = tuple(self.clipping)
            if not rules:
                raise ValueError("`clipping` must list at least one rule, or be None to keep the preset's.")
            for rule in rules:
                check_choice("clipping", rule, _CLIPPING)
            set_(self, "clipping", rules)
        set_(self, "clip_max_norm", _check_range("clip_max_norm", self.clip_max_norm, low=0.0, low_open=True))
        if self.patience is not None:
            pat = self.patience
            ints = isinstance(pat, (tuple, list)) and any(type(v) is int for v in pat)
            if ints:
                raise TypeError(
                    f"`patience` is searched as a fraction of the planned validation checks (the presets' "
                    f"rule), a (low, high) pair of floats in (0, 1); got {tuple(pat)!r}."
                )
            pat = _check_range("patience", pat, low=0.0, high=1.0, low_open=True, high_open=True)
            set_(self, "patience", pat)
        if self.monitors is not None:
            if not self.monitors:
                raise ValueError("`monitors` must name at least one metric, or be None for the default.")
            for name, mode in self.monitors.items():
                check_str("monitors key", name)
                check_choice(f"monitors[{name!r}]", mode, ("min", "max"))
            set_(self, "monitors", dict(self.monitors))
        if self.model_args is not None:
            args = {}
            for name, rng in self.model_args.items():
                check_str("model_args key", name)
                args[name] = _check_range(f"model_args[{name!r}]", rng)
            set_(self, "model_args", args)

    def replace(self, **changes: Any) -> SearchSpace:
        """Return a copy with some fields changed (validated like the original).

        Example:
            >>> SearchSpace().replace(drop_path_rate=None).drop_path_rate is None
            True
        """
        return dataclasses.replace(self, **changes)

    def monitor_choices(self, metric: str, mode: str) -> dict[str, str]:
        """Return the metrics early stopping may watch: ``monitors``, or ``val_loss`` and the objective's.

        Args:
            metric: the finder's objective metric.
            mode: its direction, ``"min"`` or ``"max"``.

        Example:
            >>> SearchSpace().monitor_choices("val_acc", "max")
            {'val_acc': 'max', 'val_loss': 'min'}
        """
        if self.monitors is not None:
            return dict(self.monitors)
        return {metric: mode, "val_loss": "min"}


@dataclass(frozen=True)
class Candidate:
    """One configuration of regularization: a preset with overrides, early stopping's metric, model args.

    Args:
        preset: the preset; its name is the ladder step it overrides.
        monitor: the metric early stopping watches (the restored weights are the best by it).
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        early_stopping: ``False`` only for the no-regularization reference, which returns its last weights.
        model_args: values for arguments of the model's constructor (e.g. ``{"dropout": 0.1}``).

    Example:
        >>> c = Candidate(get_preset("mild", weight_decay=0.01))
        >>> c.overrides()
        {'weight_decay': 0.01}
    """

    preset: Preset
    monitor: str = "val_loss"
    mode: str = "min"
    early_stopping: bool = True
    model_args: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.preset, Preset):
            raise TypeError(f"`preset` must be a Preset (see get_preset); got {self.preset!r}.")
        check_str("monitor", self.monitor)
        check_choice("mode", self.mode, ("min", "max"))
        if not isinstance(self.early_stopping, bool):
            raise TypeError(f"`early_stopping` must be a bool; got {self.early_stopping!r}.")
        args = {
            check_str("model_args key", k): check_number(f"model_args[{k!r}]", v)
            for k, v in self.model_args.items()
        }
        object.__setattr__(self, "model_args", args)

    def overrides(self) -> dict[str, Any]:
        """Return the components that differ from the named preset (another name: from ``Preset()``).

        Example:
            >>> Candidate(get_preset("strong")).overrides()
            {}
        """
        name = self.preset.name
        base = (get_preset(name) if name in PRESET_NAMES else Preset(name)).as_dict()
        return {
            k: v for k, v in self.preset.as_dict().items() if k not in ("name", "summary") and base[k] != v
        }

    def describe(self) -> str:
        """Describe the candidate in one line: ladder step, components changed, early stopping, model args.

        Example:
            >>> c = Candidate(get_preset("medium", weight_decay=0.02, clipping="norm"))
            >>> c.describe()  # doctest: +NORMALIZE_WHITESPACE
            "medium + weight_decay=0.02, clipping='norm'; early stopping on val_loss,
            patience 0.25 of the checks"
        """
        parts = [
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in self.overrides().items()
        ]
        text = self.preset.name + (" + " + ", ".join(parts) if parts else "")
        if self.early_stopping:
            pat = self.preset.patience
            text += f"; early stopping on {self.monitor}, patience " + (
                f"{pat:.2g} of the checks" if isinstance(pat, float) else f"{pat}"
            )
        else:
            text += "; no early stopping (last weights)"
        if self.model_args:
            text += "; " + ", ".join(f"{k}={v:.3g}" for k, v in self.model_args.items())
        return text


def suggest_candidate(
    trial: _TrialLike,
    space: SearchSpace,
    *,
    metric: str = "val_loss",
    mode: str = "min",
) -> Candidate:
    """Draw a ``Candidate`` from ``space`` with an Optuna trial (or anything with its ``suggest_*``).

    Parameter names: ``preset`` (when the ladder has more than one step), each searched component by its
    ``Preset`` field name, ``clip_max_norm`` only when ``clipping`` is ``"norm"``, ``monitor`` (when there
    is more than one choice) and ``model.<name>`` for model arguments.

    Args:
        trial: an Optuna ``Trial`` / ``FixedTrial`` (or a look-alike).
        space: the search space.
        metric: the objective metric (a default early-stopping monitor, see ``SearchSpace.monitor_choices``).
        mode: its direction.

    Returns:
        The candidate.

    Example:
        >>> class Fixed:  # what optuna.trial.FixedTrial does, for this example
        ...     def __init__(self, params): self.params = params
        ...     def suggest_categorical(self, name, choices): return self.params[name]
        ...     def suggest_float(self, name, low, high, log=False): return self.params[name]
        ...     def suggest_int(self, name, low, high, log=False): return self.params[name]
        >>> space = SearchSpace(monitors={"val_loss": "min"})
        >>> suggest_candidate(Fixed(ladder_params(space, "strong")), space).preset == get_preset("strong")
        True
    """
    check_choice("mode", mode, ("min", "max"))
    s = space
    name = s.presets[0] if len(s.presets) == 1 else trial.suggest_categorical("preset", list(s.presets))
    over: dict[str, Any] = {}
    if s.weight_decay is not None:
        over["weight_decay"] = trial.suggest_float("weight_decay", *s.weight_decay, log=True)
    for key in ("label_smoothing", "mixup_prob", "cutmix_prob", "drop_path_rate", "dropout_rate"):
        rng = getattr(s, key)
        if rng is not None:
            over[key] = trial.suggest_float(key, *rng)
    if "dropout" in (s.model_args or {}):
        over["dropout_rate"] = 0.0  # the model's own dropout argument is searched: no stand-in over it
    if s.clipping is not None:
        rule = (
            s.clipping[0] if len(s.clipping) == 1 else trial.suggest_categorical("clipping", list(s.clipping))
        )
        over["clipping"] = rule
        if rule == "norm":
            over["clip_max_norm"] = trial.suggest_float("clip_max_norm", *s.clip_max_norm, log=True)
    if s.patience is not None:
        over["patience"] = trial.suggest_float("patience", *s.patience)
    monitors = s.monitor_choices(metric, mode)
    names = list(monitors)
    monitor = names[0] if len(names) == 1 else trial.suggest_categorical("monitor", names)
    model_args = {k: trial.suggest_float(f"model.{k}", *rng) for k, rng in (s.model_args or {}).items()}
    base = get_preset(name)
    preset = base.replace(**{k: v for k, v in over.items() if getattr(base, k) != v})
    return Candidate(preset, monitor=monitor, mode=monitors[monitor], model_args=model_args)


def _clip(value: float, rng: tuple[float, float]) -> float:
    return min(max(value, rng[0]), rng[1])


def ladder_params(
    space: SearchSpace,
    name: str,
    model_values: Mapping[str, float] | None = None,
    *,
    metric: str = "val_loss",
    mode: str = "min",
    stand_in: bool = False,
) -> dict[str, Any]:
    """Return the trial parameters that make ``suggest_candidate`` return the named preset as it is.

    A preset's value outside a searched range is clipped to the range. Early stopping watches the
    first of the space's monitors (the objective metric by default, as the presets watch ``val_acc``
    for a classifier). On a model without residual blocks whose own ``dropout`` argument is searched,
    the preset's dropout stand-in becomes that argument (``stand_in=True``).

    Args:
        space: the search space.
        name: a preset of ``space.presets``.
        model_values: the model arguments' own values (the user's configuration); default: each range's
            low end.
        metric: the objective metric.
        mode: its direction.
        stand_in: the model has no residual block, so the preset's ``dropout_rate`` applies to it.

    Returns:
        ``{parameter name: value}`` for Optuna's ``enqueue_trial``.

    Example:
        >>> off = dict(clipping=None, patience=None, mixup_prob=None, dropout_rate=None)
        >>> space = SearchSpace(**off, model_args={})
        >>> ladder_params(space, "mild")
        {'preset': 'mild', 'weight_decay': 0.1, 'label_smoothing': 0.1, 'drop_path_rate': 0.1}
    """
    check_choice("name", name, space.presets)
    p = get_preset(name)
    params: dict[str, Any] = {}
    if len(space.presets) > 1:
        params["preset"] = name
    components = ("label_smoothing", "mixup_prob", "cutmix_prob", "drop_path_rate", "dropout_rate")
    for key in ("weight_decay", *components):
        rng = getattr(space, key)
        if rng is not None:
            params[key] = _clip(getattr(p, key), rng)
    if space.clipping is not None:
        rule = p.clipping if p.clipping in space.clipping else space.clipping[0]
        if len(space.clipping) > 1:
            params["clipping"] = rule
        if rule == "norm":
            params["clip_max_norm"] = _clip(p.clip_max_norm, space.clip_max_norm)
    if space.patience is not None and isinstance(p.patience, float):
        params["patience"] = _clip(p.patience, space.patience)
    monitors = list(space.monitor_choices(metric, mode))
    if len(monitors) > 1:
        params["monitor"] = monitors[0]
    values = model_values or {}
    for key, rng in (space.model_args or {}).items():
        value = p.dropout_rate if key == "dropout" and stand_in else float(values.get(key, rng[0]))
        params[f"model.{key}"] = _clip(value, rng)
    return params


def no_regularization(space: SearchSpace) -> Candidate:
    """Return the reference without regularization: no preset component, no early stopping (last weights).

    Weight decay, label smoothing, Mixup, CutMix and drop-path are 0, clipping is off, and every model
    argument of the space takes the low end of its range (``dropout=0``).

    Example:
        >>> c = no_regularization(SearchSpace(model_args={"dropout": (0.0, 0.5)}))
        >>> c.preset.weight_decay, c.preset.clipping, c.early_stopping, dict(c.model_args)
        (0.0, None, False, {'dropout': 0.0})
    """
    preset = Preset("none", clipping=None, summary="no regularization")
    return Candidate(
        preset,
        early_stopping=False,
        model_args={k: rng[0] for k, rng in (space.model_args or {}).items()},
    )
