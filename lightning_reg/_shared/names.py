r"""Names of parameters and modules: the one selector syntax, wrapper prefixes, default group names.

Example:
    >>> NameSelector(["backbone", "*.bias"]).matches("backbone.0.weight")
    True
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence

from lightning_reg._shared.validation import check_str_list

__all__ = [
    "WRAPPERS_ANYWHERE",
    "WRAPPER_PREFIXES",
    "NameSelector",
    "default_group_name",
    "strip_wrapper_prefixes",
]

#: Name components inserted by wrappers (FSDP, activation checkpointing, ``torch.compile``, DDP/DataParallel).
WRAPPER_PREFIXES: tuple[str, ...] = (
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "_orig_mod.",
    "module.",
)
#: the wrapper components removed wherever they occur (``module`` only leading: a user may name one so)
WRAPPERS_ANYWHERE = tuple(p[:-1] for p in WRAPPER_PREFIXES if p != "module.")


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


def default_group_name(index: int) -> str:
    """Return the one spelling of an unnamed group: ``group_<index>``.

    Example:
        >>> default_group_name(3)
        'group_3'
    """
    return f"group_{index}"


def strip_wrapper_prefixes(name: str) -> str:
    """Remove wrapper components from a dotted parameter or module name.

    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module`` and ``_orig_mod`` are removed wherever they
    occur; ``module`` only as leading components (DDP / DataParallel), so a user's own submodule called
    ``module`` deeper in the model keeps its name. (With the model at hand, the classification functions
    strip a leading ``module`` only where the model really is such a wrapper.)

    Args:
        name: a name as produced by ``named_parameters()`` / ``named_modules()`` of a wrapped model.

    Returns:
        The name the unwrapped model would use.

    Example:
        >>> strip_wrapper_prefixes("module._fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.fc.bias")
        'blocks.0.fc.bias'
    """
    parts = [p for p in name.split(".") if p not in WRAPPERS_ANYWHERE]
    while len(parts) > 1 and parts[0] == "module":
        parts.pop(0)
    if parts == ["module"]:
        return ""
    return ".".join(parts)
