"""The documentation's structure: nav pages exist, includes resolve, the README stays a front page.

The strict site build (``mkdocs build --strict`` in ``.ci/run``) checks links, anchors and docstrings; these
tests are the fast part that needs no build.
"""

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
QUICKSTART = re.compile(r"<!-- quickstart -->\n```python\n(.*?)```", re.S)


def nav_pages(node) -> list[str]:
    """Every page path in a mkdocs ``nav`` tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in nav_pages(value)]
    return []


def load_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def doc_pages() -> list[Path]:
    """Markdown pages of the site (result files are included by pages, not pages themselves)."""
    excluded = ("benchmarks/results/", "examples/results/", "_ext/")
    return [p for p in DOCS.rglob("*.md") if not p.relative_to(DOCS).as_posix().startswith(excluded)]


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    pages = nav_pages(load_config()["nav"])
    assert len(pages) == len(set(pages)), "a page is listed twice in the nav"
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"pages named in mkdocs.yml's nav but missing under docs/: {missing}"
    orphans = sorted(p.relative_to(DOCS).as_posix() for p in doc_pages())
    orphans = [p for p in orphans if p not in pages]
    assert not orphans, f"pages under docs/ that the nav does not list: {orphans}"


def test_the_pages_the_briefing_requires_are_in_the_nav():
    pages = set(nav_pages(load_config()["nav"]))
    required = {
        "index.md",
        "getting-started.md",
        "conventions.md",
        "interop.md",
        "strategies.md",
        "guarantees.md",
        "benchmarks.md",
        "examples.md",
        "changelog.md",
    } | {
        f"techniques/{t}.md"
        for t in (
            "weight-decay",
            "early-stopping",
            "gradients",
            "stochastic-depth",
            "overfitting",
            "penalties",
            "mixing",
            "batchnorm",
            "report",
        )
    }
    assert required <= pages, sorted(required - pages)


def test_readme_is_a_front_page_of_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move content into docs/"


def test_no_issue_markers_in_readme_or_docs():
    for path in [README, *doc_pages()]:
        text = path.read_text()
        found = re.findall(r"<!--\s*(?:section|issue)\b[^>]*-->|\b[Ii]ssue \d+\b", text)
        assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_every_included_file_exists():
    includes = [(p, m) for p in DOCS.rglob("*.md") for m in SNIPPET.findall(p.read_text())]
    assert includes, "no --8<-- includes found: the benchmark page should include the result files"
    missing = [(p.relative_to(ROOT).as_posix(), m) for p, m in includes if not (ROOT / m).is_file()]
    assert not missing, f"included files that do not exist: {missing}"


def test_every_benchmark_result_file_is_on_the_benchmarks_page():
    results = sorted(p.relative_to(ROOT).as_posix() for p in (DOCS / "benchmarks" / "results").glob("*.md"))
    assert results, "no benchmark result files under docs/benchmarks/results/"
    included = set(SNIPPET.findall((DOCS / "benchmarks.md").read_text()))
    assert not set(results) - included, (
        f"result files not included by benchmarks.md: {set(results) - included}"
    )


def test_every_reference_page_lists_its_packages_public_names_and_is_current():
    # the pages are generated from each package's __init__.pyi; a new public name needs a regeneration
    spec = importlib.util.spec_from_file_location("reference_pages", DOCS / "_ext" / "reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(check=True) == 0, "run: python docs/_ext/reference_pages.py"
    for stub in sorted((ROOT / "lightning_reg").glob("*/__init__.pyi")):
        page = (DOCS / "reference" / f"{stub.parent.name}.md").read_text()
        for name in re.findall(r"^    \"(\w+)\",$", stub.read_text(), re.M):
            assert re.search(rf"^::: lightning_reg\.{stub.parent.name}\.\w+\.{name}$", page, re.M), name


def test_the_site_quickstart_is_the_tested_readme_quickstart():
    readme = QUICKSTART.search(README.read_text())
    index = QUICKSTART.search((DOCS / "index.md").read_text())
    assert readme and index
    assert index.group(1) == readme.group(1), "docs/index.md and README.md quickstarts differ"


def table_body_rows(markdown: str) -> int:
    """Rows of the Markdown tables in ``markdown``, headers and separators not counted."""
    rows, previous = 0, ""
    for line in markdown.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            rows += previous.startswith("|")  # the first row of a table is its header
        previous = line
    return rows


def test_full_benchmark_tables_only_on_the_benchmarks_page_summaries_on_the_cards():
    results = DOCS / "benchmarks" / "results"
    includes = [
        (p.relative_to(DOCS).as_posix(), m) for p in doc_pages() for m in SNIPPET.findall(p.read_text())
    ]
    for full in sorted(results.glob("*.md")):
        pages = [page for page, m in includes if m == full.relative_to(ROOT).as_posix()]
        assert pages == ["benchmarks.md"], f"{full.name} is included by {pages}: full tables on one page"
    summaries = sorted((results / "summary").glob("*.md"))
    assert summaries
    for summary in summaries:
        pages = [page for page, m in includes if m == summary.relative_to(ROOT).as_posix()]
        assert pages and "benchmarks.md" not in pages, f"{summary.name}: included by {pages}"
        rows = table_body_rows(summary.read_text())
        assert 3 <= rows <= 5, f"{summary.name}: a card's summary has 3-5 rows, this one {rows}"


def test_table_body_rows_counts_rows_not_headers():
    assert table_body_rows("| a | b |\n|---|---|\n| 1 | 2 |\n\n*s*\n\n| c |\n|---|\n| 3 |\n| 4 |\n") == 3


def test_home_page_has_an_install_line_and_a_which_callback_table():
    text = (DOCS / "index.md").read_text()
    install = text.split("## Install", 1)[1].split("##", 1)[0]
    assert re.search(r"```bash\npip install \S+\n```", install), "a plain install line under ## Install"
    table = text.split("## Which callback do I need?", 1)[1].split("\n## ", 1)[0]
    cards = set(re.findall(r"\]\((techniques/[\w-]+\.md)\)", table))
    pages = {p.relative_to(DOCS).as_posix() for p in (DOCS / "techniques").glob("*.md")}
    assert cards == pages, f"cards missing from the table: {sorted(pages - cards)}"
    assert table_body_rows(table) >= len(pages)


def test_site_url_and_repo_url_are_set():
    config = load_config()
    assert config["site_url"] == "https://lightning-reg.github.io/lightning-reg/"
    assert config["repo_url"] == "https://github.com/lightning-reg/lightning-reg"
    css = config.get("extra_css", [])
    assert css and all((DOCS / c).is_file() for c in css)
    assert "white-space: nowrap" in "".join((DOCS / c).read_text() for c in css)
