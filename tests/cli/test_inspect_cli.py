"""`difaug inspect`: the tables it prints, the sheet and page it writes, its JSON and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _runs import SyntheticRun, make_run
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.report import data, sheets


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    # Shards of 2 over 5 rows: shard 1 has a failed row, shard 2 never finished.
    return make_run(tmp_path_factory.mktemp("r"), num_aux=2, fail=["2008_000123_7"], unfinished=[2])


def test_cli_inspect_shows_failures_and_writes_sheet_and_html(
    failed_run: SyntheticRun, tmp_path: Path
) -> None:
    sheet, page = tmp_path / "sheet.png", tmp_path / "page.html"
    res = CliRunner().invoke(
        app,
        ["inspect", str(failed_run.run_dir), "--sheet", str(sheet), "--html", str(page), "--thumb", "40"],
    )
    assert res.exit_code == 0, res.output
    for text in ("2008_000123_7", "truncated", "failures by reason", "00002", "device-seconds (cpu)"):
        assert text in res.output
    assert "task totals (overlap the stages)" in res.output and "model loading 2.0" in res.output
    with Image.open(sheet) as img:
        assert img.format == "PNG"
        assert img.size == sheets.sheet_size(3, 2, 40)  # 3 samples with images, X = 2
        arr = np.asarray(img.convert("RGB"))
    assert arr.std() > 10  # pictures were drawn, not just the background
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 * (3 + 2)
    assert "2008_000123_7" in text and "truncated" in text and "2007_000039_20" in text
    assert "<h2>Seconds by stage</h2>" in text and "<td>task wall time</td><td>5.20</td>" in text


def test_cli_inspect_json_and_errors(failed_run: SyntheticRun, tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["inspect", str(failed_run.run_dir), "--json"])
    assert res.exit_code == 0
    report = json.loads(res.output)
    assert report["rows"] == 6 and report["failures"][0]["sample_id"] == "2008_000123_7"
    assert report["drift_scores"]["scored"] == 0
    res = cli.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "run directory not found" in res.output and "Traceback" not in res.output


def test_seg_fallback_classes_counted_by_a_real_run(tmp_path: Path) -> None:
    """A class with no ADE20K mapping gets the fallback colour in a real seg run, and `inspect`
    counts it (never a crash)."""
    from _runner_helpers import job, make_dataset, sleep_factory

    from difaug.run.driver import run

    manifest = make_dataset(tmp_path / "d", 3)
    rows = list(csv.DictReader(manifest.open()))
    rows[1]["class_name"] = "flux capacitor"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "run"
    summary = run(job(manifest, out), generator_factory=sleep_factory())
    assert summary.ok and summary.done == 3

    assert data.summarise(out).condition_fallbacks == {"flux capacitor": 1}
    result = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "'flux capacitor' has no ADE20K mapping: 1 sample(s)" in result.output


def test_explain_draws_why_the_lowest_images_scored_low(tmp_path: Path, tiny_models: Path) -> None:
    from difaug.report.overlay import EXPLAIN_HINT, OVERLAY_LEGEND

    synth = make_run(tmp_path, num_aux=2, shard_size=3, model=str(tiny_models))
    runner = CliRunner()
    assert runner.invoke(app, ["score", str(synth.run_dir), "--device", "cpu"]).exit_code == 0
    sheet, page = tmp_path / "sheet.png", tmp_path / "index.html"
    args = ["inspect", str(synth.run_dir), "--sheet", str(sheet), "--html", str(page), "--lowest", "3"]
    plain = runner.invoke(app, [*args, "--thumb", "40"])
    assert plain.exit_code == 0, plain.output
    assert "stored" not in plain.output
    assert "Why each scored low" in page.read_text() and "why (segments)" not in page.read_text()
    assert EXPLAIN_HINT.startswith("Why each scored low")

    shown = runner.invoke(app, [*args, "--thumb", "40", "--explain", "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count(", stored ") == 0 and shown.output.count(": stored ") == 3
    assert "segments counted" in shown.output
    with Image.open(tmp_path / "sheet-lowest.png") as img:
        assert img.size == sheets.sheet_size(3, 2, 40)  # support | mask | condition | aux | why
    html = page.read_text()
    assert "why (segments)" in html and "segments counted" in html
    assert "yellow: the support mask&#x27;s outline" in html and OVERLAY_LEGEND.startswith("DiffSeg segments")
    # 5 sample rows × (3 + 2 aux) + the histogram + 3 lowest rows × 5 cells
    assert html.count("data:image/png;base64,") == 5 * 5 + 1 + 3 * 5
