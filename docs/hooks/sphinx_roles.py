"""Griffe extension: pbde's docstrings, written for ``help()`` and doctest, as the site's Markdown.

**Sphinx roles as cross-references.**
pbde's docstrings use the Sphinx roles that Python programmers read in source and in ``help()``
(``:class:`~pbde.Annotator```, ``:func:`pbde.fit```); mkdocstrings renders Markdown and would
print them raw. This extension rewrites each role, before rendering, into a code span linked to
its target, the leading ``~`` keeping only the last name as the text, as Sphinx does. A target
named relative to the object (``:func:`fit``` inside ``pbde.fit``) is resolved in the object's
scope, as Python would. Targets the site does not document (private helpers, attributes listed
in an "Attributes" section) stay plain code: the links are optional autorefs.

**Doctest examples as code.** An example's ``>>>`` lines and the output under them become one
fenced ``pycon`` block (Markdown would read ``>>>`` as three nested block quotes).
"""

from __future__ import annotations

import re
from html import escape

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` named from ``obj``'s scope (unchanged if not found)."""
    head, _, rest = target.partition(".")
    for scope in (obj, *_parents(obj)):
        try:
            found = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            continue
        return f"{found}.{rest}" if rest else found
    return target


def _parents(obj: griffe.Object):
    parent = obj.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def _reference(obj: griffe.Object, match: re.Match) -> str:
    short, target = match.group(1) == "~", match.group(2).strip().removesuffix("()")
    text = target.rsplit(".", 1)[-1] if short else target
    identifier = target if target.startswith("pbde") else _resolve(obj, target)
    return (
        f'<autoref identifier="{escape(identifier)}" optional><code>{escape(text)}</code></autoref>'
    )


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines (``>>>``, ``...`` and the output below, up to a blank line)
    in a fenced ``pycon`` block at the run's indentation."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        out += [f"{indent}```pycon", *(indent + line for line in block), f"{indent}```"]
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring for the site (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(lambda m: _reference(obj, m), obj.docstring.value)
            obj.docstring.value = fence_doctests(text)
