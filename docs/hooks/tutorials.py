"""MkDocs hook: render the jupytext tutorials (docs/tutorials/*.py) as Markdown pages.

Each ``docs/tutorials/NAME.py`` (percent format) becomes the page ``tutorials/NAME.md``; the
``.py`` file itself is still copied to the site for download. Nothing is executed: the figures
are the PNGs that a full-size run wrote to ``docs/images/tutorials/``.
"""

from __future__ import annotations

import re

import jupytext
from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    for file in list(files):
        if file.src_uri.startswith("tutorials/") and file.src_uri.endswith(".py"):
            notebook = jupytext.read(file.abs_src_path, fmt="py:percent")
            notebook.metadata.pop("jupytext", None)
            markdown = jupytext.writes(notebook, fmt="md")
            markdown = re.sub(r"\A---\n.*?\n---\n+", "", markdown, flags=re.S)  # YAML header
            name = file.src_uri.rsplit("/", 1)[1][: -len(".py")]
            download = f"\n\n---\n\nSource: [`docs/tutorials/{name}.py`]({name}.py)\n"
            files.append(
                File.generated(config, f"tutorials/{name}.md", content=markdown + download)
            )
    return files
