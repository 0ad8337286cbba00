"""`difaug.report.html`: the page holds the report's tables and images, and escapes manifest text."""

from __future__ import annotations

from pathlib import Path

from _runs import PASCAL_SPECS, SampleSpec, make_run

from difaug.report import data, html, sheets
from difaug.report.data import ScoreStats


def test_page_holds_every_section_and_one_image_per_cell(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=2, fail=["2007_000039_20"])
    rows = sheets.sheet_rows(run.run_dir)
    page = html.render_html(data.summarise(run.run_dir), rows)
    assert page.count("data:image/png;base64,") == len(rows) * (3 + 2)
    for heading in (
        "Totals",
        "Configuration",
        "Failures by reason",
        "Failed rows",
        "Seconds by stage",
        "Classes",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert "<td>cache_interval</td>" in page
    assert "<th>support</th><th>mask</th><th>condition</th><th>aux 1</th><th>aux 2</th>" in page


def test_html_escapes_manifest_text(tmp_path: Path) -> None:
    run = make_run(tmp_path, [SampleSpec("x", 3, "<script>alert(1)</script>")], num_aux=1)
    page = html.render_html(data.summarise(run.run_dir), sheets.sheet_rows(run.run_dir))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_scores_section() -> None:
    empty = ScoreStats(
        rows=4, scored=0, mean=None, quantiles={}, bins=[0] * 10, mean_segments=None, lowest=[]
    )
    assert "difaug score RUN" in html.scores_html(empty, [])
    scored = ScoreStats(
        rows=4,
        scored=4,
        mean=0.5,
        quantiles={"p50": 0.5},
        bins=[0, 4] + [0] * 8,
        mean_segments=3.0,
        lowest=[],
    )
    section = html.scores_html(scored, [])
    assert "<td>mean drift_iou</td><td>0.500</td>" in section and "drift_iou histogram" in section
    assert html.histogram_image(scored).shape == (160, 360, 3)


def test_control_characters_are_tagged_as_the_terminal_shows_them() -> None:
    from difaug.core.text import display_text
    from difaug.report.html import _e

    hostile = "cat\x1b[31m<b>\x07"
    assert _e(hostile) == "cat&lt;U+001B&gt;[31m&lt;b&gt;&lt;U+0007&gt;"
    assert "\x1b" not in _e(hostile) and display_text(hostile).startswith("cat<U+001B>")
