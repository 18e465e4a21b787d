"""MkDocs hook: render the jupytext tutorials (docs/tutorials/*.py) as pages with their output.

Each ``docs/tutorials/NAME.py`` (percent format) becomes the page ``tutorials/NAME.md``: its
Markdown cells, each code cell followed by what it printed, and under the title how long the
tutorial takes. The ``.py`` file itself is still copied to the site for download.

The output is the committed run in ``docs/tutorials/outputs/NAME.json`` (``run_tutorials.py``
in this folder records it) while the tutorial's code is unchanged. Where it is missing or
stale, the build runs the tutorial itself, cell by cell — at smoke size when ``PBDE_SMOKE=1``,
at full size otherwise — and shows the figures of that run; so a page never lacks its output.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from pathlib import Path

import run_tutorials
from mkdocs.structure.files import File, Files

OUTPUT_CLASS = "pbde-output"  # the class of an output block; tests look for it
CSS = "stylesheets/tutorials.css"
_executed: dict[tuple[str, str], tuple[dict, Path]] = {}  # (name, code hash) -> run, figures


def on_config(config):
    if CSS not in config.extra_css:
        config.extra_css.append(CSS)
    return config


def on_files(files: Files, config) -> Files:
    for file in list(files):
        if file.src_uri.startswith("tutorials/outputs/"):
            files.remove(file)  # the recorded runs are read here, not published
    for file in list(files):
        if file.src_uri.startswith("tutorials/") and file.src_uri.endswith(".py"):
            name = file.src_uri.rsplit("/", 1)[1][: -len(".py")]
            runs = run_tutorials.recorded_runs(name)
            smoke = os.environ.get("PBDE_SMOKE") == "1"
            run = runs.get("full") or (runs.get("smoke") if smoke else None)
            if run is None:
                run, figures = _execute(name, "smoke" if smoke else "full")
                _publish_figures(files, config, figures)
            markdown = render(name, run, smoke_seconds=runs.get("smoke", {}).get("seconds"))
            files.append(File.generated(config, f"tutorials/{name}.md", content=markdown))
    return files


def _execute(name: str, size: str) -> tuple[dict, Path]:
    """Run a tutorial whose recorded output is missing or stale (once per build process)."""
    key = (name, run_tutorials.code_hash(run_tutorials.tutorial_path(name)))
    if key not in _executed:
        figures = Path(tempfile.mkdtemp(prefix=f"pbde-{name}-figures-"))
        _executed[key] = (run_tutorials.execute(name, size=size, figures_dir=figures), figures)
    return _executed[key]


def _publish_figures(files: Files, config, figures: Path) -> None:
    """Show the figures of the run made for this build instead of the committed ones."""
    for figure in figures.glob("*.png"):
        uri = f"images/tutorials/{figure.name}"
        if (old := files.get_file_from_path(uri)) is not None:
            files.remove(old)
        files.append(File.generated(config, uri, abs_src_path=str(figure)))


def render(name: str, run: dict, smoke_seconds: float | None = None) -> str:
    """The page of one tutorial: Markdown cells, code cells and what each code cell printed.

    Args:
        name: The tutorial (``docs/tutorials/NAME.py``).
        run: One run as ``run_tutorials.execute`` returns it.
        smoke_seconds: How long the recorded smoke-size run took, if there is one.
    """
    notebook = run_tutorials.read_notebook(run_tutorials.tutorial_path(name))
    outputs = iter(run["cells"])
    parts = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
        elif cell.cell_type == "code":
            parts.append(f"```python\n{cell.source}\n```")
            parts.append(output_block(next(outputs)))
    note = timing_note(run, smoke_seconds)
    if parts and parts[0].startswith("# "):  # under the title
        title, _, rest = parts[0].partition("\n")
        parts[0] = f"{title}\n\n{note}\n{rest}"
    else:
        parts.insert(0, note)
    download = f"---\n\nSource: [`docs/tutorials/{name}.py`]({name}.py)"
    return "\n\n".join([*filter(None, parts), download]) + "\n"


def output_block(cell: dict) -> str:
    """A code cell's printed output (and warnings), or nothing if it was silent.

    Text goes in a fenced block; a Markdown table that the cell printed becomes a table, so that
    its columns fit the page instead of scrolling out of it.
    """
    text = cell["stdout"] + "".join(f"{warning}\n" for warning in cell["warnings"])
    blocks, lines = [], text.rstrip().splitlines()
    while lines:
        table = _leading_table(lines)
        if table:
            blocks.append(_html_table(lines[:table]))
            lines = lines[table:]
            continue
        end = next((i for i in range(1, len(lines)) if _leading_table(lines[i:])), len(lines))
        chunk = "\n".join(lines[:end])
        lines = lines[end:]
        if chunk.strip():
            fence = "`" * max(3, 1 + max(map(len, re.findall(r"`+", chunk)), default=0))
            # sentences wrap at the page's width; aligned columns (runs of spaces) scroll
            wrap = "" if "  " in chunk else f" .{OUTPUT_CLASS}-wrap"
            blocks.append(f"{fence}{{.text .{OUTPUT_CLASS}{wrap}}}\n{chunk}\n{fence}")
    return "\n\n".join(blocks)


_TABLE_ROW = re.compile(r"^\|.*\|$")
_TABLE_RULE = re.compile(r"^\|[-:| ]+\|$")
_NUMBER = re.compile(r"^([-+−]?[\d.,]+(e[-+]?\d+)?%?|—|none)$")


def _leading_table(lines: list[str]) -> int:
    """How many of the first lines form a Markdown table (header, rule, rows); 0 if none."""
    if len(lines) < 2 or not _TABLE_ROW.match(lines[0]) or not _TABLE_RULE.match(lines[1]):
        return 0
    rows = 2
    while rows < len(lines) and _TABLE_ROW.match(lines[rows]):
        rows += 1
    return rows


def _html_table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [html.escape(cell.strip()) for cell in line.strip()[1:-1].split("|")]

    def row(line: str) -> str:
        return "".join(
            f'<td align="right">{cell}</td>' if _NUMBER.match(cell) else f"<td>{cell}</td>"
            for cell in cells(line)
        )

    head = "".join(f"<th>{cell}</th>" for cell in cells(lines[0]))
    body = "".join(f"<tr>{row(line)}</tr>" for line in lines[2:])
    return (
        f'<div class="{OUTPUT_CLASS} {OUTPUT_CLASS}-table"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def timing_note(run: dict, smoke_seconds: float | None) -> str:
    """Under the title: how long the tutorial takes, as measured."""
    cores = run["machine"]["cores"]
    if run["size"] == "full":
        text = f"Runs in about {_duration(run['seconds'])} at full size on a {cores}-core CPU"
        load = run["machine"].get("load_average")
        if load and load > cores:  # other jobs slowed the run down: say so
            text += f" shared with other jobs (load average {load:g})"
        text += (
            ""
            if smoke_seconds is None
            else f"; `PBDE_SMOKE=1` runs it in {_duration(smoke_seconds)}"
        )
        return f'!!! info "Running time"\n    {text}.'
    return (
        '!!! warning "Smoke-size output"\n'
        f"    The output on this page comes from a smoke-size run (`PBDE_SMOKE=1`, "
        f"{_duration(run['seconds'])} on a {cores}-core CPU) made while building the site: its "
        "numbers are not those the text discusses, which come from a full-size run."
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} minutes"


def pages_without_output(site_dir: str | os.PathLike) -> list[str]:
    """The tutorial pages of a built site that show no output block (the site's check).

    Every tutorial prints something, so a page without an output block was rendered from
    nothing: ``tests/test_tutorials.py`` checks the rendering, a site-build test can call this.
    """
    pages = sorted(Path(site_dir, "tutorials").glob("*/index.html"))
    if not pages:
        raise ValueError(f"site_dir must hold a built site with tutorial pages; got {site_dir}")
    marker = re.compile(rf'class="[^"]*\b{OUTPUT_CLASS}\b')
    return [str(page) for page in pages if not marker.search(page.read_text())]
