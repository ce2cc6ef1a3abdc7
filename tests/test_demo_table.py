"""The demo's published numbers: README.md's table agrees with the docs' result file, and the checker that
``.ci/check_demo.sh`` runs against a fresh demo run catches every kind of drift."""

from __future__ import annotations

from example_projects import check_demo
from example_projects.check_demo import PUBLISHED, README, differences, parse_table

PRINTED = """| config | test acc (mean ± std) | - baseline: mean [95% CI] | restored epoch | time/run |
|---|---|---|---|---|
| baseline | 85.6% ± 3.7 | - | - | 9 s |
| medium | 92.8% ± 0.6 | +7.2 pp [+2.6, +11.8] * | 26,32 | 10 s |

baseline: train - val accuracy +13.5 pp at the end.
"""
README_TEXT = """intro

<!-- demo-table -->
| config | - baseline: mean [95% CI] |
|---|---|
| baseline | - |
| medium | +7.2 pp [+2.6, +11.8] * |
<!-- /demo-table -->
"""


def test_readme_and_the_docs_show_the_published_demo_numbers():
    assert differences(PUBLISHED.read_text(), PUBLISHED.read_text(), README.read_text()) == []
    assert check_demo.main([]) == 0
    readme_head, readme_rows = parse_table(check_demo.README_TABLE.search(README.read_text()).group(1))
    assert {"config", "test acc (mean ± std)", "- baseline: mean [95% CI]"} <= set(readme_head)
    assert [row[0] for row in readme_rows] == ["baseline", "mild", "medium", "strong"]


def test_a_fresh_run_that_agrees_passes_even_with_other_times():
    published = PRINTED.replace("| 9 s |", "| 14 s |") + "\nReproduce: `python -m ...`.\n"
    assert differences(PRINTED, published, README_TEXT) == []


def test_drift_is_reported_cell_by_cell():
    published = PRINTED + "\nReproduce: `...`.\n"
    drifted = PRINTED.replace("+7.2 pp [+2.6, +11.8] *", "+6.9 pp [+2.1, +11.7] *")
    found = differences(drifted, published, README_TEXT)
    assert any("docs/examples/results/compare.md: medium / - baseline" in f for f in found)
    assert any("README.md: medium / - baseline: mean [95% CI]: '+7.2 pp" in f for f in found)
    lines = differences(PRINTED.replace("+13.5 pp", "+12.0 pp"), published, README_TEXT)
    assert len(lines) == 1 and "lines under the table differ" in lines[0]
    renamed = PRINTED.replace("restored epoch", "best epoch")
    found = differences(renamed, published, README_TEXT)
    assert any("column 'restored epoch' is not one the demo prints" in f for f in found)
    assert differences(PRINTED, published, "no table") == [
        "README.md: no table between <!-- demo-table --> and <!-- /demo-table -->"
    ]
