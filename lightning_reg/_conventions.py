r"""What every part of lightning-reg shares: validators, the logging rule, metric keys, name selectors.

Pure Python and PyTorch (no Lightning import): core modules validate with the same functions as the
callbacks, and the report reads the same key names the callbacks log.

* **Validators** raise ``TypeError`` for a wrong type and ``ValueError`` for a wrong value; the message
  names the argument, the valid values and the value received: ``\`p\` must be a number in [0, 1]; got 1.5.``.
* **The logging rule** is Lightning's own: a step metric is written when
  ``(batches_that_stepped + 1) % n == 0`` (or when the trainer is stopping), with ``n =
  log_every_n_steps``; ``None`` means the Trainer's interval and ``0`` means never. Every callback decides
  with :func:`is_logging_step` and writes with :func:`log_step_metrics`, so every key lands on the same
  rows as Lightning's own step metrics and is monitorable by ``EarlyStopping`` and ``ModelCheckpoint``.
* **Metric keys** are the constants of :class:`Keys`.
* **Name selectors** (:class:`NameSelector`): one syntax for parameter and module names everywhere.
* **Group names** default to ``group_<i>`` (:func:`default_group_name`).
* **Verbosity**: ``verbose=0`` (or ``False``) prints nothing but warnings, ``1`` (the default) one concise
  line at fit start, ``2`` (or ``True``) details (:func:`check_verbose`, :func:`say`).

Example:
    >>> check_number("p", 0.5, low=0, high=1)
    0.5
    >>> NameSelector(["backbone", "*.bias"]).matches("backbone.0.weight")
    True
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []  # private: the library's shared rules, documented in docs/conventions.md


# ------------------------------------------------------------------------------------------------ validators
def _fmt(value: Any) -> str:
    return repr(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError``.

    Example:
        >>> check_bool("log", True)
        True
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool (True or False); got {_fmt(value)}.")
    return value


def check_str(name: str, value: Any, *, empty_ok: bool = False) -> str:
    """Return ``value`` if it is a (non-empty) str.

    Example:
        >>> check_str("monitor", "val_loss")
        'val_loss'
    """
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str; got {_fmt(value)} of type {type(value).__name__}.")
    if not value and not empty_ok:
        raise ValueError(f"`{name}` must be a non-empty str; got {_fmt(value)}.")
    return value


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, none_ok: bool = False
) -> Any:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]`` (or ``None`` when allowed).

    Args:
        name: argument name for the message.
        value: the value to check.
        low: smallest valid value (inclusive), or ``None``.
        high: largest valid value (inclusive), or ``None``.
        none_ok: accept ``None``.

    Example:
        >>> check_int("patience", 3, low=0)
        3
        >>> check_int("patience", -1, low=0)
        Traceback (most recent call last):
        ...
        ValueError: `patience` must be an int >= 0; got -1.
    """
    if value is None and none_ok:
        return None
    rule = _int_rule(low, high) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be {rule}; got {_fmt(value)} of type {type(value).__name__}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be {rule}; got {_fmt(value)}.")
    return value


def _int_rule(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an int in [{low}, {high}]"
    if low is not None:
        return f"an int >= {low}"
    if high is not None:
        return f"an int <= {high}"
    return "an int"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    none_ok: bool = False,
) -> Any:
    """Return ``float(value)`` if it is a real number (not a bool) in the given range.

    Args:
        name: argument name for the message.
        value: the value to check.
        low: lower bound, or ``None``.
        high: upper bound, or ``None``.
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
        finite: reject NaN and infinities.
        none_ok: accept ``None`` (returned as is).

    Example:
        >>> check_number("max_rate", 0.25, low=0, high=1, high_open=True)
        0.25
        >>> check_number("max_rate", 1.0, low=0, high=1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: `max_rate` must be a number in [0, 1); got 1.0.
    """
    if value is None and none_ok:
        return None
    rule = _number_rule(low, high, low_open, high_open, finite) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            raise TypeError(f"`{name}` must be {rule} (a Python number, not a tensor); got {_fmt(value)}.")
        raise TypeError(f"`{name}` must be {rule}; got {_fmt(value)} of type {type(value).__name__}.")
    x = float(value)
    bad = (math.isnan(x) or (finite and math.isinf(x))) or (
        (low is not None and (x < low or (low_open and x == low)))
        or (high is not None and (x > high or (high_open and x == high)))
    )
    if bad:
        raise ValueError(f"`{name}` must be {rule}; got {_fmt(value)}.")
    return x


def _number_rule(low: Any, high: Any, low_open: bool, high_open: bool, finite: bool) -> str:
    what = "a finite number" if finite and low is None and high is None else "a number"

    def g(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    if low is not None and high is not None:
        return f"{what} in {'(' if low_open else '['}{g(low)}, {g(high)}{')' if high_open else ']'}"
    if low is not None:
        if not finite:
            return f"a number {'>' if low_open else '>='} {g(low)} (inf allowed)"
        return f"a finite number {'>' if low_open else '>='} {g(low)}"
    if high is not None:
        return f"{'a finite number' if finite else what} {'<' if high_open else '<='} {g(high)}"
    return what


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("mode", "max", ("min", "max"))
        'max'
        >>> check_choice("mode", "up", ("min", "max"))
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be one of 'min', 'max'; got 'up'.
    """
    choices = tuple(choices)
    if not any(value == c and type(value) is type(c) for c in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {listed}; got {_fmt(value)}.")
    return value


def check_callable(name: str, value: Any, what: str = "a callable", *, none_ok: bool = False) -> Any:
    """Return ``value`` if it is callable (or ``None`` when allowed), else raise ``TypeError``.

    Example:
        >>> check_callable("optimizer", print) is print
        True
    """
    if value is None and none_ok:
        return None
    if not callable(value):
        raise TypeError(f"`{name}` must be {what}{' or None' if none_ok else ''}; got {_fmt(value)}.")
    return value


def check_rate(name: str, value: Any, *, none_ok: bool = False) -> Any:
    """Check a drop or dropout rate: a number in ``[0, 1)``.

    Example:
        >>> check_rate("max_rate", 0.1)
        0.1
    """
    return check_number(name, value, low=0.0, high=1.0, high_open=True, none_ok=none_ok)


def check_str_list(name: str, value: Any, *, none_ok: bool = False) -> list[str] | None:
    """Check a list (or tuple) of str; a single str is refused (it would be read as characters).

    Example:
        >>> check_str_list("exclude", ["*.bias"])
        ['*.bias']
    """
    if value is None and none_ok:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a list of str{' or None' if none_ok else ''}; got {_fmt(value)}"
            + (f" (write [{value!r}])." if isinstance(value, str) else ".")
        )
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"`{name}` must be a list of str; it holds {_fmt(item)}.")
    return list(value)


def check_log_every_n_steps(value: Any) -> int | None:
    """``log_every_n_steps`` of a callback: ``None`` (the Trainer's interval), ``0`` (off) or an int >= 1.

    Example:
        >>> check_log_every_n_steps(None), check_log_every_n_steps(0)
        (None, 0)
    """
    return check_int("log_every_n_steps", value, low=0, none_ok=True)


def check_verbose(value: Any) -> int:
    """Normalise ``verbose``: ``False``/``0`` quiet, ``1`` one line at fit start, ``True``/``2`` details.

    Example:
        >>> check_verbose(True), check_verbose(False), check_verbose(1)
        (2, 0, 1)
    """
    if isinstance(value, bool):
        return 2 if value else 0
    return int(check_int("verbose", value, low=0, high=2))


# ------------------------------------------------------------------------------------------------ logging
def log_interval(trainer: Any, log_every_n_steps: int | None) -> int:
    """Return the interval in force: the callback's own, else the Trainer's; ``0`` means never.

    Example:
        >>> class T: log_every_n_steps = 50
        >>> log_interval(T(), None), log_interval(T(), 10), log_interval(T(), 0)
        (50, 10, 0)
    """
    n = trainer.log_every_n_steps if log_every_n_steps is None else log_every_n_steps
    return int(n or 0)


def logger_step(trainer: Any) -> int:
    """Return the step Lightning logs the current batch's step metrics at (batches that stepped).

    Example:
        >>> logger_step(None)
        0
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", 0))


def is_logging_step(trainer: Any, log_every_n_steps: int | None) -> bool:
    """Lightning's rule: ``(batches_that_stepped + 1) % n == 0`` or the trainer is stopping; ``n = 0`` never.

    Evaluated during a training batch (``on_train_batch_start`` up to ``on_train_batch_end``), it selects
    exactly the batches whose step metrics Lightning writes to the loggers (with ``log_every_n_steps=None``
    it equals ``trainer._logger_connector.should_update_logs``).

    Example:
        >>> class Loop: _batches_that_stepped = 49
        >>> class Fit: epoch_loop = Loop()
        >>> class T: log_every_n_steps = 50; fit_loop = Fit(); should_stop = False
        >>> [is_logging_step(T(), n) for n in (None, 0, 7, 25)]
        [True, False, False, True]
    """
    n = log_interval(trainer, log_every_n_steps)
    if n <= 0:
        return False
    return (logger_step(trainer) + 1) % n == 0 or bool(getattr(trainer, "should_stop", False))


def _plain(t: Tensor) -> Tensor:
    """Return the global value of a DTensor (a norm of sharded parameters under FSDP2/ModelParallel).

    ``full_tensor()`` reduces partial placements across ranks; every rank logs, so every rank takes part.
    """
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def log_step_metrics(trainer: Any, metrics: Mapping[str, Tensor | float]) -> None:
    """Write step metrics to every logger and make them monitorable; one host sync per call.

    The values are converted to floats with one ``tolist()`` of the stacked tensors (the loggers need
    host numbers, as Lightning's own ``log_metrics`` does), written with Lightning's step for the current
    batch (so the rows line up with Lightning's own step metrics), and put into
    ``trainer.callback_metrics`` as tensors, where ``EarlyStopping``, ``ModelCheckpoint`` and the progress
    bar find them. Cost (``benchmarks/conventions.py``): see the docs' benchmark page. Call it only on
    logging steps.

    Args:
        trainer: the Trainer.
        metrics: key -> 0-d tensor or number.
    """
    if not metrics:
        return
    keys = list(metrics)
    values = [_plain(v.detach()).reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v)) for v in
              metrics.values()]
    device = values[0].device
    stacked = torch.stack([v.to(device, torch.float32) for v in values])
    callback_metrics = trainer.callback_metrics
    for key, value in zip(keys, stacked.unbind()):
        callback_metrics[key] = value
    if trainer.loggers:  # every rank calls its loggers, as Lightning does (they write on rank 0 only)
        floats = dict(zip(keys, stacked.tolist()))
        trainer.logged_metrics.update(floats)
        step = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(floats, step=step)


def log_epoch_metrics(trainer: Any, metrics: Mapping[str, Tensor | float], with_epoch: bool = True) -> None:
    """Write epoch-level metrics from a hook where ``self.log`` is refused (e.g. ``on_validation_end``).

    The values land on the row Lightning writes the epoch's own metrics to (during validation: the current
    step; after the epoch's last batch, e.g. in ``on_train_epoch_end`` or ``on_train_end``: one step back,
    as Lightning does), with the ``epoch`` column, and in ``trainer.callback_metrics`` (monitorable). One host
    sync per call, only when a logger is attached.

    Args:
        trainer: the Trainer.
        metrics: key -> 0-d tensor or number.
        with_epoch: also write ``epoch`` (``trainer.current_epoch``); pass ``False`` after the fit loop ended
            (``on_train_end``), where the counter is already past the last epoch.
    """
    if not metrics:
        return
    values = {
        k: _plain(v.detach()).reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v))
        for k, v in metrics.items()
    }
    trainer.callback_metrics.update(values)
    if trainer.loggers:  # every rank calls its loggers, as Lightning does (they write on rank 0 only)
        floats = dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))
        trainer.logged_metrics.update(floats)
        step = max(0, logger_step(trainer) - (0 if getattr(trainer, "validating", False) else 1))
        row = {**floats, "epoch": trainer.current_epoch} if with_epoch else floats
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)


# ------------------------------------------------------------------------------------------------ keys
class Keys:
    """The metric keys lightning-reg logs (``prefix`` arguments replace the first component).

    Example:
        >>> Keys.GRAD_NORM_TOTAL, Keys.grad("norm/layer1", prefix="g")
        ('grad/norm_total', 'g/norm/layer1')
    """

    GRAD_PREFIX = "grad"
    GRAD_NORM_TOTAL = "grad/norm_total"
    GRAD_NONFINITE_COUNT = "grad/nonfinite_count"
    GRAD_MAX_ABS = "grad/max_abs"
    GRAD_CLIP_NORM_PRE = "grad/clip/norm_pre"
    GRAD_CLIP_NORM_POST = "grad/clip/norm_post"
    GRAD_CLIP_COEF = "grad/clip/coef"
    GRAD_CLIP_THRESHOLD = "grad/clip/threshold"
    GRAD_CLIP_SKIPPED_STEPS = "grad/clip/skipped_steps"
    DROP_PATH_MAX_RATE = "stochastic_depth/max_rate"
    DROPOUT_MAX_RATE = "stochastic_depth/dropout_max_rate"
    OVERFIT_ALERT = "overfit/alert"
    PENALTY_VALUE = "penalty/value"
    PROXIMAL_ZERO_FRACTION = "proximal_l1/zero_fraction"
    BEST_EPOCH = "early_stopping/best_epoch"
    RESTORED_EPOCH = "early_stopping/restored_epoch"

    @staticmethod
    def grad(name: str, prefix: str = "grad") -> str:
        """``<prefix>/<name>``, e.g. ``grad/norm/<group>`` or ``grad/clip/norm_pre``.

        Example:
            >>> Keys.grad("clip/coef")
            'grad/clip/coef'
        """
        return f"{prefix}/{name}"

    @staticmethod
    def overfit(pair: str, quantity: str) -> str:
        """``overfit/<pair>_<quantity>``, e.g. ``overfit/loss_gap``.

        Example:
            >>> Keys.overfit("loss", "gap")
            'overfit/loss_gap'
        """
        return f"overfit/{pair}_{quantity}"


def default_group_name(index: int) -> str:
    """Return the one spelling of an unnamed group: ``group_<index>``.

    Example:
        >>> default_group_name(3)
        'group_3'
    """
    return f"group_{index}"


# ------------------------------------------------------------------------------------------------ selectors
_GLOB_CHARS = set("*?[")
_REGEX_ONLY = re.compile(r"[\^$\\+(){}|]")


class NameSelector:
    r"""Select parameter or module names with one syntax, used by every argument that takes names.

    A selector is a list of patterns; a name is selected when any pattern matches it. Names are dotted
    paths as ``named_parameters()`` / ``named_modules()`` give them (wrapper prefixes such as
    ``_orig_mod.`` or ``_fsdp_wrapped_module.`` stripped). Each pattern is one of:

    * a **dotted name**: that name, or anything below it (``"backbone"`` selects
      ``backbone.layer1.0.conv1.weight``; ``"head.bias"`` selects exactly that parameter);
    * a **glob** (``*``, ``?``, ``[...]``, matched with ``fnmatch`` against the whole name or any of its
      dotted prefixes): ``"*.bias"``, ``"blocks.*.attn"``, ``"*norm*"``;
    * a **regular expression** after ``re:``, searched in the name: ``"re:^fc\."``, ``"re:(gamma|beta)$"``.

    A pattern that looks like a regex (``^``, ``$``, ``\``, ``+``, ``|``, brackets of groups) but lacks the
    ``re:`` prefix is refused, so it is never silently read as a glob that matches nothing.

    Args:
        patterns: the patterns (a single str is refused: write ``["pattern"]``).
        name: the argument name, for error messages.

    Example:
        >>> s = NameSelector(["head", "*.bias", "re:norm\\d"])
        >>> [s.matches(n) for n in ("head.weight", "body.0.bias", "body.norm1.weight", "body.0.weight")]
        [True, True, True, False]
    """

    def __init__(self, patterns: Sequence[str], name: str = "patterns") -> None:
        self.name = name
        self.patterns: list[str] = list(check_str_list(name, patterns) or [])
        self._compiled: list[Callable[[str], bool]] = [self._compile(p) for p in self.patterns]

    def _compile(self, pattern: str) -> Callable[[str], bool]:
        if not pattern:
            raise ValueError(f"`{self.name}` holds an empty pattern; write a name, a glob or 're:<regex>'.")
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as err:
                raise ValueError(
                    f"`{self.name}`: {pattern!r} is not a valid regex after 're:' ({err})."
                ) from err
            return lambda n: rx.search(n) is not None
        if _REGEX_ONLY.search(pattern):
            raise ValueError(
                f"`{self.name}`: {pattern!r} looks like a regular expression; write 're:{pattern}' for a"
                " regex, or use a dotted name or a glob (*, ?, [...])."
            )
        if _GLOB_CHARS & set(pattern):
            return lambda n: any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(n))
        return lambda n: n == pattern or n.startswith(pattern + ".")

    def matches(self, name: str) -> bool:
        """Whether any pattern selects ``name``.

        Example:
            >>> NameSelector(["blocks.*.attn"]).matches("blocks.3.attn.qkv.weight")
            True
        """
        return any(f(name) for f in self._compiled)

    def first_match(self, name: str) -> int | None:
        """Index of the first pattern that selects ``name``, or ``None``.

        Example:
            >>> NameSelector(["*.weight", "*.bias"]).first_match("fc.bias")
            1
        """
        for i, f in enumerate(self._compiled):
            if f(name):
                return i
        return None

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """Return the patterns that select none of ``names`` (for the "matched nothing" warning).

        Example:
            >>> NameSelector(["fc", "head"]).unmatched(["fc.weight"])
            ['head']
        """
        names = list(names)
        return [p for p, f in zip(self.patterns, self._compiled) if not any(f(n) for n in names)]

    def suggestions(self, names: Iterable[str]) -> dict[str, str]:
        """For each pattern that selects nothing, a pattern that would: the same one below a prefix.

        A frequent slip is a name relative to the wrapped model (``"head"``) where the names are relative to
        the LightningModule (``"net.head.weight"``); this finds the prefix (``"net.head"``).

        Args:
            names: the names the patterns were matched against.

        Returns:
            ``{unmatched pattern: suggested pattern}`` for the patterns a prefix would fix.

        Example:
            >>> NameSelector(["head", "*.gamma"]).suggestions(["net.head.weight", "net.body.0.weight"])
            {'head': 'net.head'}
        """
        names = list(names)
        out: dict[str, str] = {}
        for pattern in self.unmatched(names):
            if pattern.startswith("re:"):
                continue
            single = self._compile(pattern)
            for name in names:
                parts = name.split(".")
                hit = next((i for i in range(1, len(parts)) if single(".".join(parts[i:]))), None)
                if hit is not None:
                    out[pattern] = ".".join(parts[:hit]) + "." + pattern
                    break
        return out

    def unmatched_message(self, names: Iterable[str], what: str = "parameter") -> str:
        """Return the sentence of every "pattern selects nothing" warning (empty if every pattern matches).

        Example:
            >>> msg = NameSelector(["head"], name="exclude").unmatched_message(["net.head.weight"])
            >>> msg.split("; ")[1].split("?")[0]
            "did you mean 'net.head'"
        """
        names = list(names)
        unmatched = self.unmatched(names)
        if not unmatched:
            return ""
        hints = self.suggestions(names)
        mean = ", ".join(f"{v!r}" + (f" for {k!r}" if len(unmatched) > 1 else "") for k, v in hints.items())
        listing = "named_parameters()" if what == "parameter" else "named_modules()"
        return (
            f"`{self.name}` pattern(s) {unmatched} select no {what}"
            + (f"; did you mean {mean}?" if hints else ".")
            + f" Names are relative to the LightningModule; list them with [n for n, _ in model.{listing}]."
        )

    def __repr__(self) -> str:
        return f"NameSelector({self.patterns!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NameSelector) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(tuple(self.patterns))


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


# ------------------------------------------------------------------------------------------------ verbosity
def say(verbose: int, level: int, message: str) -> None:
    """Print ``message`` on rank zero (Lightning's ``rank_zero_info``) when ``verbose >= level``.

    Args:
        verbose: the callback's normalised verbosity (:func:`check_verbose`).
        level: 1 for the one line at fit start, 2 for details.
        message: the text.
    """
    if verbose >= level:
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        rank_zero_info(message)
