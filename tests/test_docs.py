"""The documentation site builds with warnings as errors and reads well in a browser.

The site is built once per test module (``mkdocs build --strict``, ~10 s) into a temporary
folder; the tests then read the generated HTML. The acceptance checks — no raw Sphinx role, no
formula left untypeset, no figure wider than the text column without a full-size link, no
internal wording — are functions of one page's HTML, each also run on a bad page of its own so
that it is seen to fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
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
    # a tutorial whose recorded run is stale is run by the build: at smoke size here
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PBDE_SMOKE="1", OMP_NUM_THREADS="1")
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


# --- acceptance: what a reader sees -----------------------------------------------------------

# the text column of a page at a 1280-px window: an image wider than this is shrunk to fit it
PAGE_WIDTH_PX = 750
RAW_ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|exc|obj):`")
# words about how the project was made, which mean nothing to a reader
INTERNAL = re.compile(
    r"\bissue\s*#\s*\d+|\bPR\s*#\s*\d+|#\d+'s\b|\bsessions?\b|\bwork\s*tree\b|\bworktree\b",
    flags=re.I,
)
# what arithmatex leaves when it typesets, and what it leaves behind when it does not
MATH_MARKER = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]")


class _Text(HTMLParser):
    """The text of a page outside code, scripts and styles, with its formulas set apart."""

    SKIP = {"code", "pre", "script", "style", "kbd", "samp"}
    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.formulas: list[str] = []
        self._stack: list[str] = []  # "skip", "math" or "" per open element

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        kind = "math" if "arithmatex" in classes else "skip" if tag in self.SKIP else ""
        self._stack.append(kind)
        if kind == "math":
            self.formulas.append("")

    def handle_endtag(self, tag):
        if tag not in self.VOID and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if "math" in self._stack:
            self.formulas[-1] += data
        elif "skip" not in self._stack:
            self.text.append(data)


def _parse_text(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def raw_sphinx_roles(html: str) -> list[str]:
    """Sphinx roles shown as text (``:class:`X```) instead of as a link."""
    text = " ".join(_parse_text(html).text) + " ".join(re.findall(r"<code>(.*?)</code>", html))
    return [match.group(0) for match in RAW_ROLE.finditer(text)]


def untypeset_formulas(html: str) -> list[str]:
    """Formula markers left in the text ($, \\( …) and formulas arithmatex did not delimit."""
    parsed = _parse_text(html)
    problems = []
    for chunk in parsed.text:
        for match in MATH_MARKER.finditer(chunk):
            start = max(match.start() - 30, 0)
            problems.append(
                f"marker {match.group(0)!r} in text: …{chunk[start : match.end() + 30]}…"
            )
    for formula in parsed.formulas:
        tex = formula.strip()
        if not (tex.startswith(("\\(", "\\[")) and tex.endswith(("\\)", "\\]"))):
            problems.append(f"formula without arithmatex's delimiters: {tex[:60]!r}")
    # KaTeX and the script that runs it on the formulas (docs/javascripts/math.js), from the site
    for script in ("javascripts/katex/katex.min.js", "javascripts/math.js"):
        if parsed.formulas and not re.search(rf'<script src="(?:\.\./)*{re.escape(script)}"', html):
            problems.append(f"formulas on a page that does not load the site's own {script}")
    return problems


def formulas_of(html: str) -> list[str]:
    """The LaTeX of each formula on a page, without arithmatex's delimiters."""
    return [formula.strip()[2:-2] for formula in _parse_text(html).formulas]


def _png_width(path: Path) -> int | None:
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    return struct.unpack(">I", header[16:20])[0]


class _LinkedImages(HTMLParser):
    """Each <img>'s source and the href of the <a> it sits in (None outside a link)."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, str | None]] = []
        self._links: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "a":
            self._links.append(values.get("href"))
        elif tag == "img" and values.get("src"):
            self.images.append((values["src"], self._links[-1] if self._links else None))

    def handle_endtag(self, tag):
        if tag == "a" and self._links:
            self._links.pop()


def _images_of(html: str) -> list[tuple[str, str | None]]:
    parser = _LinkedImages()
    parser.feed(html)
    return parser.images


def _local(page: Path, url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme or parsed.netloc or url.startswith("data:"):
        return None
    return (page.parent / unquote(parsed.path)).resolve()


def _shown_at_full_size(page: Path, image: Path, link: str | None) -> bool:
    """The image links to itself, or (a thumbnail) to a page where it links to itself."""
    target = _local(page, link) if link else None
    if target is None:
        return False
    if target == image:
        return True
    html = target / "index.html" if target.is_dir() else target
    if html.suffix != ".html" or not html.is_file():
        return False
    return any(
        _local(html, source) == image and link and _local(html, link) == image
        for source, link in _images_of(html.read_text(encoding="utf-8"))
    )


def wide_images_without_zoom(html: str, page: Path) -> list[str]:
    """Local PNGs wider than the text column that cannot be opened at full size from the page."""
    found = []
    for source, link in _images_of(html):
        image = _local(page, source)
        width = _png_width(image) if image is not None and image.is_file() else None
        if (
            width is not None
            and width > PAGE_WIDTH_PX
            and not _shown_at_full_size(page, image, link)
        ):
            found.append(f"{source} ({width} px)")
    return found


def internal_wording(html: str) -> list[str]:
    """Words about how the project was made (issue numbers, work sessions), anywhere visible."""
    parser = _Text()
    parser.SKIP = {"script", "style"}  # code shown on the page counts too
    parser.feed(html)
    text = " ".join(parser.text)
    return [text[max(m.start() - 40, 0) : m.end() + 40] for m in INTERNAL.finditer(text)]


def _pages(site: Path) -> list[Path]:
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert pages, "the site has no pages"
    return pages


def _each_page(site: Path, check) -> list[str]:
    return [
        f"{page.relative_to(site)}: {problem}"
        for page in _pages(site)
        for problem in check(page.read_text(encoding="utf-8"), page)
    ]


def test_no_page_shows_a_raw_sphinx_role(site):
    found = _each_page(site, lambda html, page: raw_sphinx_roles(html))
    assert not found, "raw Sphinx roles:\n" + "\n".join(found[:20])


def test_every_formula_is_typeset(site):
    found = _each_page(site, lambda html, page: untypeset_formulas(html))
    assert not found, "formulas left as text:\n" + "\n".join(found[:20])
    # the pages that are about the equations do show them typeset
    for page in ["concepts", "reproduce", "tutorials/reward_model_is_a_density"]:
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert formulas_of(html), f"{page}: no typeset formula"
    concepts = formulas_of((site / "concepts" / "index.html").read_text(encoding="utf-8"))
    assert r"\pi \propto \pi_{\mathrm{ref}}\,{p^*}^{1/\beta}" in concepts  # the notation, once


def test_katex_is_served_by_the_site_itself(site):
    """Formulas render offline: KaTeX, its stylesheet and its fonts are files of the site, and
    no page loads a script, stylesheet or font from another host."""
    katex = site / "javascripts" / "katex"
    assert (katex / "katex.min.js").stat().st_size > 100_000
    css = (katex / "katex.min.css").read_text(encoding="utf-8")
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", css)
    assert fonts, "katex.min.css names no woff2 font"
    missing = [font for font in fonts if not (katex / font).is_file()]
    assert not missing, f"KaTeX fonts missing from the site: {missing}"
    assert (katex / "LICENSE").is_file()
    external = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//", re.I)
    found = _each_page(site, lambda html, page: external.findall(html))
    assert not found, "pages that load assets from the network:\n" + "\n".join(found[:10])


@pytest.mark.skipif(shutil.which("node") is None, reason="node is needed to run KaTeX")
def test_every_formula_is_valid_latex_for_katex(site):
    """KaTeX (the copy the site ships) parses every formula of every page without an error."""
    formulas = sorted({f for page in _pages(site) for f in formulas_of(page.read_text("utf-8"))})
    assert formulas
    script = (
        "const katex = require(process.argv[1]);"
        "const bad = [];"
        "for (const tex of JSON.parse(require('fs').readFileSync(0, 'utf8'))) {"
        "  try { katex.renderToString(tex, {throwOnError: true}); }"
        "  catch (error) { bad.push(tex + '  <- ' + error.message); } }"
        "console.log(JSON.stringify(bad));"
    )
    completed = subprocess.run(
        ["node", "-e", script, str(site / "javascripts" / "katex" / "katex.min.js")],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    bad = json.loads(completed.stdout)
    assert not bad, "formulas KaTeX cannot typeset:\n" + "\n".join(bad[:20])


def test_every_wide_figure_links_to_its_full_size(site):
    found = _each_page(site, wide_images_without_zoom)
    assert not found, f"images wider than {PAGE_WIDTH_PX} px without a zoom link:\n" + "\n".join(
        found[:20]
    )
    reproduce = site / "reproduce" / "index.html"
    assert "pbde-zoom" in reproduce.read_text(encoding="utf-8")  # the paper figures are wide


def test_no_page_mentions_how_the_project_was_made(site):
    found = _each_page(site, lambda html, page: internal_wording(html))
    assert not found, "internal wording on the site:\n" + "\n".join(found[:20])


def test_every_tutorial_page_shows_the_output_of_its_run(site):
    # the printed tables and numbers the prose refers to; docs/hooks/tutorials.py renders them
    # from the recorded runs (tests/test_tutorials.py checks that check on a page without any)
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        from tutorials import pages_without_output
    finally:
        sys.path.pop(0)
    pages = sorted((site / "tutorials").glob("*/index.html"))
    assert len(pages) == len(list((ROOT / "docs" / "tutorials").glob("*.py"))), pages
    assert not pages_without_output(site), pages_without_output(site)


# --- each acceptance check fails on a page that has the fault ---------------------------------


def test_the_role_check_finds_a_raw_role():
    assert raw_sphinx_roles("<p>See :class:`~pbde.Annotator`.</p>")
    assert raw_sphinx_roles("<p>See <code>:func:`pbde.fit`</code>.</p>")
    assert not raw_sphinx_roles('<p>See <a href="x"><code>Annotator</code></a>.</p>')


def test_the_formula_check_finds_untypeset_math():
    katex = (
        '<script src="../javascripts/katex/katex.min.js"></script>'
        '<script src="../javascripts/math.js"></script>'
    )
    good = f'<p>with <span class="arithmatex">\\(p^*\\)</span> and cost $5</p>{katex}'
    assert untypeset_formulas(good)  # a dollar in prose is a formula marker left as text
    assert not untypeset_formulas(f'<p>with <span class="arithmatex">\\(p^*\\)</span></p>{katex}')
    assert untypeset_formulas(f"<p>the optimum $\\pi_{{\\mathrm{{ref}}}}$</p>{katex}")
    assert untypeset_formulas(f"<p>inline \\(x^2\\) left as text</p>{katex}")
    assert untypeset_formulas(f'<div class="arithmatex">x^2</div>{katex}')
    # formulas but no local KaTeX (e.g. a CDN script): not typeset offline
    cdn = '<script src="https://cdn.example/katex.min.js"></script>'
    assert untypeset_formulas(f'<span class="arithmatex">\\(x\\)</span>{cdn}')
    without_renderer = '<script src="../javascripts/katex/katex.min.js"></script>'
    assert untypeset_formulas(f'<span class="arithmatex">\\(x\\)</span>{without_renderer}')
    # dollars and backslashes inside code are code
    assert not untypeset_formulas("<pre><code>echo $HOME \\(x\\)</code></pre>")


def test_the_zoom_check_finds_a_wide_image_without_a_link(tmp_path):
    def png(width: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, 10, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4

    (tmp_path / "wide.png").write_bytes(png(PAGE_WIDTH_PX + 1))
    (tmp_path / "narrow.png").write_bytes(png(PAGE_WIDTH_PX))
    page = tmp_path / "index.html"
    assert wide_images_without_zoom('<img src="wide.png">', page) == [
        f"wide.png ({PAGE_WIDTH_PX + 1} px)"
    ]
    assert wide_images_without_zoom('<a href="other.png"><img src="wide.png"></a>', page)
    assert not wide_images_without_zoom('<a href="wide.png"><img src="wide.png"></a>', page)
    assert not wide_images_without_zoom('<img src="narrow.png">', page)
    # a thumbnail may link to a page that shows the figure with its own full-size link
    (tmp_path / "figures").mkdir()
    figures = tmp_path / "figures" / "index.html"
    thumbnail = '<a href="figures/"><img src="wide.png"></a>'
    figures.write_text('<img src="../wide.png">')
    assert wide_images_without_zoom(thumbnail, page)
    figures.write_text('<a href="../wide.png"><img src="../wide.png"></a>')
    assert not wide_images_without_zoom(thumbnail, page)


def test_the_wording_check_finds_internal_words():
    assert internal_wording("<p>As in issue #3, the fix…</p>")
    assert internal_wording("<p>measured in the fifth session</p>")
    assert internal_wording("<pre><code>lm-mixture-latent  #5's open problem</code></pre>")
    assert not internal_wording("<p>Dumoulin et al. leave this as an open problem.</p>")
