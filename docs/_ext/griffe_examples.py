"""Griffe extension for the API reference: read an ``Example:`` docstring section as ``Examples:``.

The library's docstrings (Google style) title their doctest section ``Example:``, which griffe would
render as an admonition of free Markdown text (so ``>>>`` lines and their outputs were read as Markdown).
As ``Examples:`` the section is rendered as Python console code, exactly as the doctests run it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of every loaded object (modules, classes, functions, attributes)."""
        if obj.docstring is not None and "Example:" in obj.docstring.value:
            obj.docstring.value = _EXAMPLE.sub(r"\g<indent>Examples:", obj.docstring.value)
