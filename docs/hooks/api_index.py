"""MkDocs hook: the API landing page lists every public name of ``pbde`` with its summary.

The marker ``<!-- public names -->`` on ``api/pbde.md`` becomes a table of ``pbde.__all__``: each
name linked to where it is documented, and the first line of its docstring. Generated at build
time from the package itself, so it cannot fall behind ``__all__``.
"""

from __future__ import annotations

import inspect
import re
from html import escape

MARKER = "<!-- public names -->"


def _kind(value) -> str:
    if inspect.ismodule(value):
        return "module"
    if inspect.isclass(value):
        return "class"
    return "function" if callable(value) else "value"


ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
CODE = re.compile(r"``?([^`]+)``?")


def _summary_html(doc: str) -> str:
    """The docstring's first paragraph as HTML: roles and literals as code, the rest escaped."""
    text = doc.strip().split("\n\n")[0].replace("\n", " ")
    text = ROLE.sub(lambda m: "``" + m.group(1).rsplit(".", 1)[-1] + "``", text)
    parts = CODE.split(text)  # even: prose, odd: code
    return "".join(
        f"<code>{escape(part)}</code>" if i % 2 else escape(part) for i, part in enumerate(parts)
    )


def public_names_table() -> str:
    import pbde

    rows = []
    for name in pbde.__all__:
        value = getattr(pbde, name)
        link = (
            f'<autoref identifier="pbde.{escape(name)}" optional><code>{escape(name)}</code>'
            "</autoref>"
        )
        summary = _summary_html(inspect.getdoc(value) or "")
        rows.append(f"<tr><td>{link}</td><td>{_kind(value)}</td><td>{summary}</td></tr>")
    head = "<tr><th>name</th><th>kind</th><th>what it is</th></tr>"
    body = "\n".join(rows)
    return (
        f'<div class="public-names" markdown="0">\n<table>\n<thead>{head}</thead>\n<tbody>\n'
        f"{body}\n</tbody>\n</table>\n</div>"
    )


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "api/pbde.md" and MARKER in markdown:
        return markdown.replace(MARKER, public_names_table())
    return markdown
