"""The built site: it builds strictly, and what it shows is what the Markdown meant.

One ``mkdocs build --strict`` into a temporary directory (a few seconds), then checks on the HTML:

* no Sphinx role (``:func:`x```) and no reST literal-block marker (``::``) shows up as text. Pages written
  in ``docs/`` must have none, and neither must the API reference, whose text comes from the docstrings
  in ``lightning_reg/`` (they cross-reference with mkdocstrings' ``[`name`][path]`` links);
* every cell of the generated benchmark tables is on the page (``{...}`` in a cell used to be swallowed
  by ``attr_list``);
* the numbered procedure on the presets page is a list, not one paragraph;
* the 404 page's root-absolute links carry the site's subpath.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc|ref):(?:`|<code>)")
LITERAL_BLOCK = re.compile(r"::")
TABLE_ROW = re.compile(r"^\|(.*)\|\s*$")


class Regions(HTMLParser):
    """Splits a page into text written on the page and text generated from docstrings (mkdocstrings).

    ``flat`` keeps ``<code>`` start tags (a role followed by code), ``text`` is the visible prose only
    (no code, no scripts).
    """

    SKIP = {"pre", "code", "script", "style", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.flat = {"page": [], "docstring": []}
        self.text = {"page": [], "docstring": []}
        self.div_depth = 0
        self.doc_depth: int | None = None  # div depth at which the docstring-generated block started
        self.skip = 0

    @property
    def region(self) -> str:
        return "docstring" if self.doc_depth is not None else "page"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            self.div_depth += 1
            classes = (dict(attrs).get("class") or "").split()
            if self.doc_depth is None and "doc" in classes:
                self.doc_depth = self.div_depth
        if tag == "code":
            self.flat[self.region].append("<code>")
        if tag in self.SKIP:
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "div":
            if self.doc_depth is not None and self.div_depth == self.doc_depth:
                self.doc_depth = None
            self.div_depth -= 1

    def handle_data(self, data: str) -> None:
        self.flat[self.region].append(data)
        if not self.skip:
            self.text[self.region].append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    return out


@pytest.fixture(scope="module")
def regions(site: Path) -> dict[str, Regions]:
    parsed = {}
    for page in sorted(site.rglob("*.html")):
        r = Regions()
        r.feed(page.read_text())
        parsed[page.relative_to(site).as_posix()] = r
    return parsed


def findings(regions: dict[str, Regions], region: str, pattern: re.Pattern[str], which: str) -> list[str]:
    found = []
    for page, r in regions.items():
        source = "".join(getattr(r, which)[region])
        for m in pattern.finditer(source):
            found.append(f"{page}: ...{source[max(0, m.start() - 50) : m.end() + 30]!r}...")
    return found


def test_pages_show_no_sphinx_roles_or_literal_block_markers(regions):
    roles = findings(regions, "page", ROLE, "flat")
    markers = findings(regions, "page", LITERAL_BLOCK, "text")
    assert not roles, "Sphinx roles shown as text (write `name`):\n" + "\n".join(roles)
    assert not markers, "reST '::' markers shown as text (use a fenced block):\n" + "\n".join(markers)


def test_api_reference_shows_no_sphinx_roles(regions):
    roles = findings(regions, "docstring", ROLE, "flat")
    assert not roles, f"{len(roles)} Sphinx roles shown as text in the API reference:\n" + "\n".join(roles)


def test_api_reference_shows_no_literal_block_markers(regions):
    markers = findings(regions, "docstring", LITERAL_BLOCK, "text")
    assert not markers, f"{len(markers)} '::' markers shown as text in the API reference:\n" + "\n".join(
        markers
    )


def test_the_checks_see_roles_and_markers():
    """The parser attributes text to the right region and the patterns catch both spellings."""
    r = Regions()
    r.feed(
        '<p>See :func:`x` and a list::</p><div class="doc doc-object"><div class="doc-contents">'
        "<p>Uses :class:<code>Y</code>.</p></div></div><p>after</p>"
    )
    assert ROLE.search("".join(r.flat["page"])) and LITERAL_BLOCK.search("".join(r.text["page"]))
    assert ROLE.search("".join(r.flat["docstring"])) and "after" in "".join(r.text["page"])
    assert not ROLE.search("".join(r.flat["docstring"]).replace(":class:", "``"))


def cells(markdown: str) -> list[str]:
    """Every non-empty cell of the Markdown tables in ``markdown``, as the reader should see it."""
    out = []
    for line in markdown.splitlines():
        m = TABLE_ROW.match(line)
        if not m or set(m.group(1).replace("|", "").strip()) <= set("-: "):
            continue
        for raw in re.split(r"(?<!\\)\|", m.group(1)):
            text = html.unescape(re.sub(r"\\([_*|{}])", r"\1", raw).replace("`", "")).strip()
            if text:
                out.append(" ".join(text.split()))
    return out


def page_text(r: Regions) -> str:
    return " ".join("".join(r.flat["page"]).replace("<code>", "").split())


def test_every_generated_table_cell_is_shown(regions):
    results = DOCS / "benchmarks" / "results"
    benchmarks = page_text(regions["benchmarks/index.html"])
    missing = [
        f"{path.name}: {c!r}" for path in sorted(results.glob("*.md")) for c in cells(path.read_text())
        if c not in benchmarks
    ]
    assert not missing, "table cells missing from the built benchmarks page:\n" + "\n".join(missing)
    presets = page_text(regions["techniques/presets/index.html"])
    summary = (results / "summary" / "presets.md").read_text()
    assert all(c in presets for c in cells(summary))


def test_the_choice_rows_show_the_scores(regions):
    text = page_text(regions["benchmarks/index.html"])
    row = r"mild mild-b mild-a, mild-b"  # the panel's choice row: level, chosen candidate, eligible ones
    assert re.search(row, text)


def test_the_presets_procedure_is_a_numbered_list(site):
    page = (site / "techniques" / "presets" / "index.html").read_text()
    section = page.split('id="how-the-values-were-chosen"', 1)[1].split("<h3", 1)[0]
    ordered = re.search(r"<ol>(.*?)</ol>", section, re.S)
    assert ordered, "the procedure is not an ordered list"
    items = re.findall(r"<li>", ordered.group(1))
    assert len(items) == 4, f"4 steps; got {len(items)} items"
    assert "Judgement on the held-out half" in ordered.group(1)  # the last step is inside the list
    assert section.index("<table>") < section.index("<ol>")  # the panel's table comes before the steps


def test_404_links_carry_the_site_subpath(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    base = urlparse(config["site_url"]).path
    assert base.startswith("/") and base.endswith("/") and base != "/"
    page = (site / "404.html").read_text()
    links = re.findall(r'(?:href|src)="(/[^"/][^"]*)"', page)
    assert links, "no root-absolute links on the 404 page"
    wrong = [link for link in links if not link.startswith(base)]
    assert not wrong, f"root-absolute links outside {base}: {wrong}"
