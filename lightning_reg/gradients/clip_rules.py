"""Clipping rules as small objects behind one interface, in pure PyTorch (no Lightning).

Each rule owns its options (validated at construction), its resumable state and the clip itself:

- ``NormClipRule`` (``"norm"``): the total norm clipped to ``max_norm`` (``clip_grad_norm_``'s rule);
- ``ValueClipRule`` (``"value"``): every element clamped to ``[-clip_value, clip_value]``;
- ``AGCRule`` (``"agc"``): Brock et al. 2021, unit-wise, with a floor on the weight norm (``clip_factor``,
  ``agc_eps``, ``agc_exclude``);
- ``AutoClipRule`` (``"autoclip"``): Seetharaman et al. 2020, a percentile of recent total norms
  (``percentile``, ``history_size``);
- ``ZClipRule`` (``"zclip"``): Kumar et al. 2025, the z-score of the total norm against its EMA statistics
  (``zclip_alpha``, ``zclip_z_thresh``, ``zclip_warmup_steps``).

The option names are ``GradientClipping``'s own, so a YAML config, the callback and a rule use one
vocabulary. ``CLIP_RULES`` maps each ``algorithm`` name to its rule class.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> rule = NormClipRule(max_norm=1.0)
    >>> out = rule.clip_([p], [p.grad], total_norm=torch.tensor(5.0))
    >>> round(float(p.grad.norm()), 4), sorted(out)
    (1.0, ['coef'])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_reg._shared.names import NameSelector
from lightning_reg._shared.validation import check_int, check_number, check_str_list
from lightning_reg.gradients.functional import (
    AutoClipState,
    ZClipState,
    agc_clip_,
    autoclip_step,
    clip_coefficient,
    clip_grads_by_value_,
    scale_grads_,
    zclip_step,
)

__all__ = [
    "CLIP_RULES",
    "AGCRule",
    "AutoClipRule",
    "ClipRule",
    "NormClipRule",
    "ValueClipRule",
    "ZClipRule",
]


class ClipRule(ABC):
    """The interface of a clipping rule: options, resumable state and an in-place clip.

    Subclasses set ``name`` (the ``algorithm`` that selects them), ``options`` (their constructor
    arguments, named as ``GradientClipping``'s) and ``uses_total_norm`` (whether ``clip_`` needs the
    total norm; ``GradientClipping`` then computes it once and shares it).

    Example:
        >>> sorted(CLIP_RULES)
        ['agc', 'autoclip', 'norm', 'value', 'zclip']
        >>> CLIP_RULES["zclip"].options
        ('zclip_alpha', 'zclip_z_thresh', 'zclip_warmup_steps')
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]]
    uses_total_norm: ClassVar[bool] = True
    #: Whether the rule works on sharded gradients (FSDP): AGC needs whole parameter rows.
    supports_sharding: ClassVar[bool] = True

    @abstractmethod
    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Clip the gradients in place; return what to log (``coef``, ``threshold``) as tensors.

        Args:
            params: the parameters with a gradient.
            grads: their gradients (local shards under FSDP2), in the same order.
            total_norm: the total gradient norm (given when ``uses_total_norm``), else ``None``.

        Returns:
            ``{"coef": ...}`` for rules that rescale every gradient by one coefficient (the post-clip norm
            is then ``total_norm * coef``), ``{"threshold": ...}`` for adaptive rules; no host sync.
        """

    @abstractmethod
    def describe(self) -> str:
        """One short phrase for the callback's fit-start line, e.g. ``"|g| <= 0.5"``."""

    def bind(self, named_parameters: Mapping[str, Tensor]) -> str | None:
        """Tell the rule the model's parameters by name; return a warning to issue, or ``None``.

        Args:
            named_parameters: ``{name: parameter}``, names as the LightningModule sees them.

        Example:
            >>> NormClipRule().bind({}) is None
            True
        """
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """Return the resumable state as CPU tensors (empty for stateless rules).

        Example:
            >>> NormClipRule().state_dict()
            {}
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:  # noqa: B027 - stateless by default
        """Restore what ``state_dict`` returned.

        Args:
            state: the saved state.
        """


class NormClipRule(ClipRule):
    """Clip the total norm to ``max_norm`` (the rule of ``torch.nn.utils.clip_grad_norm_``).

    Args:
        max_norm: the largest total norm, ``> 0``.

    Example:
        >>> NormClipRule(max_norm=0.5).describe()
        'total norm <= 0.5'
    """

    name = "norm"
    options = ("max_norm",)

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = check_number("max_norm", max_norm, low=0, low_open=True)

    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Scale every gradient by ``min(1, max_norm / total_norm)``; see ``ClipRule.clip_``."""
        assert total_norm is not None
        coef = clip_coefficient(total_norm, self.max_norm)
        scale_grads_(grads, coef)
        return {"coef": coef}

    def describe(self) -> str:
        """See ``ClipRule.describe``."""
        return f"total norm <= {self.max_norm:g}"


class ValueClipRule(ClipRule):
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (also a true clamp on shards).

    Args:
        clip_value: the bound, ``> 0``.

    Example:
        >>> ValueClipRule(0.5).describe()
        '|g| <= 0.5'
    """

    name = "value"
    options = ("clip_value",)
    uses_total_norm = False

    def __init__(self, clip_value: float = 1.0) -> None:
        self.clip_value = check_number("clip_value", clip_value, low=0, low_open=True)

    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Clamp in place; see ``ClipRule.clip_``."""
        clip_grads_by_value_(params, self.clip_value)
        return {}

    def describe(self) -> str:
        """See ``ClipRule.describe``."""
        return f"|g| <= {self.clip_value:g}"


class AGCRule(ClipRule):
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise, with a floor on the weight norm.

    Args:
        clip_factor: the paper's lambda, ``> 0``.
        agc_eps: floor on the weight norm, ``>= 0`` (keeps zero-initialised weights trainable).
        agc_exclude: parameter names left unclipped (e.g. the classifier head), in the library's name
            selector syntax: a dotted name or prefix, a glob, or ``re:<regex>``.

    Example:
        >>> rule = AGCRule(agc_exclude=["head"])
        >>> rule.bind({"body.weight": torch.zeros(1), "head.weight": torch.zeros(1)}) is None
        True
        >>> rule.describe()
        'AGC clip_factor=0.01, 1 tensors excluded'
    """

    name = "agc"
    options = ("clip_factor", "agc_eps", "agc_exclude")
    uses_total_norm = False
    supports_sharding = False

    def __init__(
        self, clip_factor: float = 0.01, agc_eps: float = 1e-3, agc_exclude: list[str] | None = None
    ) -> None:
        self.clip_factor = check_number("clip_factor", clip_factor, low=0, low_open=True)
        self.agc_eps = check_number("agc_eps", agc_eps, low=0)
        self.agc_exclude = check_str_list("agc_exclude", agc_exclude, none_ok=True) or []
        self._selector = NameSelector(self.agc_exclude, name="agc_exclude")
        self._excluded: set[int] = set()

    def bind(self, named_parameters: Mapping[str, Tensor]) -> str | None:
        """Resolve ``agc_exclude`` against the names; a pattern that matches nothing gives a warning.

        Args:
            named_parameters: ``{name: parameter}``, names as the LightningModule sees them.
        """
        self._excluded = {id(p) for name, p in named_parameters.items() if self._selector.matches(name)}
        return self._selector.unmatched_message(named_parameters) or None

    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Clip every unit of every parameter not excluded; see ``ClipRule.clip_``."""
        agc_clip_([p for p in params if id(p) not in self._excluded], self.clip_factor, self.agc_eps)
        return {}

    def describe(self) -> str:
        """See ``ClipRule.describe``."""
        excluded = f", {len(self._excluded)} tensors excluded" if self.agc_exclude else ""
        return f"AGC clip_factor={self.clip_factor:g}{excluded}"


def _cpu_copy(state: Any) -> dict[str, Tensor]:
    """Every tensor field of an adaptive state, copied to the CPU (for a checkpoint); ``{}`` for none."""
    return {} if state is None else {k: v.detach().cpu().clone() for k, v in vars(state).items()}


def _on_device(state: Any, device: torch.device) -> None:
    """Move every tensor field of an adaptive state to ``device`` (a resumed state is loaded on the CPU)."""
    for key, value in vars(state).items():
        if value.device != device:
            setattr(state, key, value.to(device))


class AutoClipRule(ClipRule):
    """AutoClip (Seetharaman et al. 2020): clip to a percentile of the recent total norms.

    The threshold is the ``percentile``-th percentile of the last ``history_size`` total norms, the current
    one included; the history (``AutoClipState``) is resumable.

    Args:
        percentile: in percent: ``0`` or a number in ``[1, 100]`` (a value in ``(0, 1)`` looks like a
            fraction and is refused).
        history_size: how many recent norms to keep, ``>= 1``.

    Example:
        >>> rule = AutoClipRule(percentile=50, history_size=4)
        >>> for v in (1.0, 3.0):
        ...     out = rule.clip_([], [], torch.tensor(v))
        >>> float(out["threshold"]), int(rule.state.count)
        (2.0, 2)
    """

    name = "autoclip"
    options = ("percentile", "history_size")

    def __init__(self, percentile: float = 10.0, history_size: int = 1000) -> None:
        self.percentile = check_number("percentile", percentile, low=0, high=100)
        if 0 < self.percentile < 1:
            raise ValueError(
                f"`percentile` is in percent (0 to 100); got {percentile!r}, which looks like a fraction:"
                f" pass {self.percentile * 100:g} for the {self.percentile * 100:g}th percentile (values in"
                " (0, 1) are refused)."
            )
        self.history_size = check_int("history_size", history_size, low=1)
        self.state: AutoClipState | None = None

    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Record the norm, clip to the percentile; see ``ClipRule.clip_``."""
        assert total_norm is not None
        if self.state is None:
            self.state = AutoClipState.create(self.history_size, device=total_norm.device)
        _on_device(self.state, total_norm.device)
        threshold = autoclip_step(self.state, total_norm, self.percentile)
        coef = clip_coefficient(total_norm, threshold)
        scale_grads_(grads, coef)
        return {"coef": coef, "threshold": threshold}

    def describe(self) -> str:
        """See ``ClipRule.describe``."""
        return f"AutoClip {self.percentile:g}th percentile of the last {self.history_size} norms"

    def state_dict(self) -> dict[str, Tensor]:
        """Return the norm history (see ``ClipRule.state_dict``)."""
        return _cpu_copy(self.state)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the norm history (see ``ClipRule.load_state_dict``)."""
        if state:
            self.state = AutoClipState(state["history"].clone(), state["count"].clone())


class ZClipRule(ClipRule):
    """ZClip (Kumar et al. 2025): clip a total norm whose z-score against its EMA statistics is too high.

    After ``zclip_warmup_steps`` steps (no clipping; they initialise mean and variance), a norm with
    z-score above ``zclip_z_thresh`` is clipped to ``mean + z_thresh**2 / z * std``; the EMA (decay
    ``zclip_alpha``) is fed the clipped norm. The statistics
    (``ZClipState``) are resumable.

    Args:
        zclip_alpha: EMA decay in ``(0, 1)``.
        zclip_z_thresh: z-score threshold, ``> 0``.
        zclip_warmup_steps: warm-up steps, ``>= 1``.

    Example:
        >>> ZClipRule(zclip_warmup_steps=5).describe()
        'ZClip z > 2.5 after 5 warm-up steps'
    """

    name = "zclip"
    options = ("zclip_alpha", "zclip_z_thresh", "zclip_warmup_steps")

    def __init__(
        self, zclip_alpha: float = 0.97, zclip_z_thresh: float = 2.5, zclip_warmup_steps: int = 25
    ) -> None:
        self.zclip_alpha = check_number(
            "zclip_alpha", zclip_alpha, low=0, high=1, low_open=True, high_open=True
        )
        self.zclip_z_thresh = check_number("zclip_z_thresh", zclip_z_thresh, low=0, low_open=True)
        self.zclip_warmup_steps = check_int("zclip_warmup_steps", zclip_warmup_steps, low=1)
        self.state: ZClipState | None = None

    def clip_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], total_norm: Tensor | None
    ) -> dict[str, Tensor]:
        """Update the statistics, clip a spike; see ``ClipRule.clip_``."""
        assert total_norm is not None
        if self.state is None:
            self.state = ZClipState.create(self.zclip_warmup_steps, device=total_norm.device)
        _on_device(self.state, total_norm.device)
        target, coef = zclip_step(self.state, total_norm, self.zclip_alpha, self.zclip_z_thresh)
        scale_grads_(grads, coef)
        return {"coef": coef, "threshold": target}

    def describe(self) -> str:
        """See ``ClipRule.describe``."""
        return f"ZClip z > {self.zclip_z_thresh:g} after {self.zclip_warmup_steps} warm-up steps"

    def state_dict(self) -> dict[str, Tensor]:
        """Return the EMA statistics (see ``ClipRule.state_dict``)."""
        return _cpu_copy(self.state)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the EMA statistics (see ``ClipRule.load_state_dict``)."""
        if state:
            self.state = ZClipState(
                state["mean"].clone(), state["var"].clone(), state["warmup"].clone(), state["count"].clone()
            )


#: ``algorithm`` name -> rule class.
CLIP_RULES: Mapping[str, type[ClipRule]] = {
    rule.name: rule for rule in (NormClipRule, ValueClipRule, AGCRule, AutoClipRule, ZClipRule)
}
