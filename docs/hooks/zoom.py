"""MkDocs hook: a figure wider than the page's text column links to itself at full size.

The papers' figures are wide (a panel per β, τ or δ, 1700–2000 px); the theme scales them to the
text column, where their labels become too small to read. Every PNG whose natural width exceeds
``COLUMN_PX`` is wrapped in a link to the same file, so a click opens it at full size (in the
browser, with its own zoom; nothing is loaded from the network).
"""

from __future__ import annotations

import posixpath
import re
import struct
from html import escape
from pathlib import Path

# the text column of a page in a 1280-px-wide window, both sidebars shown
COLUMN_PX = 740

_IMAGE = re.compile(r"(<a\b[^>]*>\s*)?(<img\b[^>]*>)", flags=re.S)
_SOURCE = re.compile(r"""\bsrc=(["'])(.*?)\1""", flags=re.S)


def png_width(path: Path) -> int | None:
    """The width in pixels stored in a PNG's header, or None when the file is not a PNG."""
    with open(path, "rb") as stream:
        header = stream.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    return struct.unpack(">I", header[16:20])[0]


def _wrap(match: re.Match, page_dir: str, files) -> str:
    linked, image = match.group(1), match.group(2)
    source = _SOURCE.search(image)
    if linked or source is None or "://" in source.group(2) or source.group(2).startswith("data:"):
        return match.group(0)
    url = source.group(2).split("#", 1)[0].split("?", 1)[0]
    site_path = posixpath.normpath(posixpath.join(page_dir, url))
    file = files.get_file_from_path(site_path)
    if file is None or not file.abs_src_path:
        return match.group(0)
    width = png_width(Path(file.abs_src_path))
    if width is None or width <= COLUMN_PX:
        return match.group(0)
    href = escape(source.group(2), quote=True)
    return (
        f'<a class="pbde-zoom" href="{href}" title="Open the figure at full size ({width} px)">'
        f"{image}</a>"
    )


def on_page_content(html: str, page, config, files) -> str:
    # image sources are relative to the page's URL: "tutorials/NAME/" + "../../images/X.png"
    url = page.url
    page_dir = url if not url or url.endswith("/") else posixpath.dirname(url) + "/"
    return _IMAGE.sub(lambda match: _wrap(match, page_dir, files), html)
