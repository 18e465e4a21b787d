"""The documentation site builds with warnings as errors, and every page shows its figures.

The site is built once per test session (``mkdocs build --strict``, ~10 s) into a temporary
folder; the tests then read the generated HTML.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return out


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.extend(value for key, value in attrs if key == "src" and value)


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _html_of(site: Path, page: str) -> Path:
    # mkdocs' directory URLs: tutorials/NAME.md -> tutorials/NAME/index.html
    stem = page[: -len(".md")]
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


def _mkdocs_config() -> dict:
    # mkdocs.yml is plain YAML apart from python tags, which it does not use
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_page_in_the_nav_is_built(site):
    pages = _nav_pages(_mkdocs_config()["nav"])
    assert pages, "mkdocs.yml has no nav"
    missing = [page for page in pages if not _html_of(site, page).is_file()]
    assert not missing, f"pages in the nav that were not built: {missing}"


def test_every_tutorial_is_in_the_nav():
    pages = set(_nav_pages(_mkdocs_config()["nav"]))
    tutorials = {f"tutorials/{p.stem}.md" for p in (ROOT / "docs" / "tutorials").glob("*.py")}
    assert tutorials, "no tutorials found"
    assert tutorials <= pages, f"tutorials missing from the nav: {sorted(tutorials - pages)}"


def test_every_image_on_every_page_exists(site):
    shown = 0
    broken = []
    for html in site.rglob("*.html"):
        parser = _Images()
        parser.feed(html.read_text(encoding="utf-8"))
        for source in parser.sources:
            url = urlparse(source)
            if url.scheme or url.netloc or source.startswith("data:"):
                continue  # external or inline: not ours
            target = (html.parent / unquote(url.path)).resolve()
            if target.is_file() and target.stat().st_size > 0:
                shown += target.suffix == ".png"
            else:
                broken.append(f"{html.relative_to(site)} -> {source}")
    assert not broken, "images that do not resolve in the built site:\n" + "\n".join(broken)
    # the tutorials and the paper-figures page show their PNGs
    assert shown >= len(list((ROOT / "docs" / "images" / "reproduce").glob("*.png")))


def test_tutorial_pages_show_their_figures(site):
    for source in (ROOT / "docs" / "tutorials").glob("*.py"):
        html = _html_of(site, f"tutorials/{source.stem}.md").read_text(encoding="utf-8")
        expected = set(re.findall(r"\]\(\.\./images/tutorials/([^)]+\.png)\)", source.read_text()))
        assert expected, f"{source.name} shows no figure from docs/images/tutorials"
        parser = _Images()
        parser.feed(html)
        shown = {Path(unquote(urlparse(s).path)).name for s in parser.sources}
        assert expected <= shown, f"{source.name}: figures not on its page: {expected - shown}"


def test_no_formula_is_swallowed_by_emphasis(site):
    # "p*(x_A) − log p*(x_B)" must not render as p<em>(x_A) − log p</em>(x_B): emphasis holds
    # words, never a formula
    formula = re.compile(r"[∝=·−(){}\[\]^]")
    swallowed = []
    for html in site.rglob("*.html"):
        for em in re.findall(r"<em>(.*?)</em>", html.read_text(encoding="utf-8"), flags=re.S):
            if formula.search(em):
                swallowed.append(f"{html.relative_to(site)}: <em>{em[:80]}</em>")
    assert not swallowed, "emphasis around formulas (an unescaped *):\n" + "\n".join(swallowed)


def test_api_pages_render_cross_references_not_sphinx_roles(site):
    """Docstrings use Sphinx roles (:class:`~pbde.Annotator`); the site must show them as code
    linked to their targets (docs/hooks/sphinx_roles.py), never as raw role text."""
    raw = re.compile(r":(?:class|func|mod|meth|attr|data|exc|obj):(?:`|<code>)")
    pages = sorted((site / "api").rglob("*.html"))
    assert pages
    found = [
        f"{page.relative_to(site)}: {match.group(0)}"
        for page in pages
        for match in raw.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not found, "raw Sphinx roles on API pages:\n" + "\n".join(found[:20])
    fit_page = (site / "api" / "fit" / "index.html").read_text(encoding="utf-8")
    # `:class:`~pbde.Annotator`` in pbde.fit's docstrings links to the annotators page
    assert 'href="../annotators/#pbde.annotators.Annotator"' in fit_page


def test_the_api_landing_page_lists_every_public_name(site):
    import pbde

    page = (site / "api" / "pbde" / "index.html").read_text(encoding="utf-8")
    table = page[page.index('<div class="public-names"') :]
    table = table[: table.index("</table>")]
    listed = re.findall(r"<tr><td>.*?<code>([^<]+)</code>", table, flags=re.S)
    assert listed == list(pbde.__all__)
    assert 'href="../annotators/#pbde.annotators.Annotator"' in table  # names link to their pages
