"""`difaug inspect` / `difaug.report.data`: totals, failures, timings, contact sheet, HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _runs import PASCAL_SPECS, SampleSpec, SyntheticRun, make_run
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.report import data as report


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    # Shards of 2 over 5 rows: shard 1 has a failed row, shard 2 never finished.
    return make_run(tmp_path_factory.mktemp("r"), num_aux=2, fail=["2008_000123_7"], unfinished=[2])


def test_summarise_counts_failures_and_timings(failed_run: SyntheticRun) -> None:
    rep = report.summarise(failed_run.run_dir)
    assert (rep.manifest_rows, rep.rows, rep.samples, rep.num_aux) == (5, 6, 3, 2)
    assert rep.classes == {"aeroplane": 1, "person": 1, "tvmonitor": 1}
    assert (rep.shards_done, rep.shards_planned, rep.unfinished_shards) == (2, 3, ["00002"])
    assert [(f.row, f.sample_id, f.stage, f.shard) for f in rep.failures] == [
        (4, "2008_000123_7", "read", "00001")
    ]
    assert list(rep.failures_by_reason.values()) == [1] and "truncated" in next(iter(rep.failures_by_reason))
    assert rep.failures_by_stage == {"read": 1}
    # _runs markers: generate = 0.5 s per image, total = 1.1 + 0.5 s per image, shard i at 10 i s for 5 s.
    assert rep.device_seconds == pytest.approx(0.5 * 6)
    assert [t.images for t in rep.per_shard] == [4, 2]
    assert rep.per_shard[0].images_per_s == pytest.approx(4 / 3.1)
    assert rep.wall_seconds == pytest.approx(15.0) and rep.images_per_s == pytest.approx(6 / 15)
    assert rep.stage_seconds["generate"] == pytest.approx(3.0)
    # The tasks' totals are not stages: kept apart.
    assert not {"load", "total", "cpu"} & set(rep.stage_seconds)
    assert rep.task_seconds == {"load": pytest.approx(2.0), "wall": pytest.approx(2.2 + 0.5 * 6)}
    assert 0 < rep.shard_bytes < rep.disk_bytes
    assert rep.config["num_aux"] == 2 and rep.config["controlnet"] == "lllyasviel/sd-controlnet-hed"
    assert rep.provenance["device"] == ["cpu"]
    json.dumps(rep.to_dict())  # serialisable for --json


def test_cli_inspect_shows_failures_and_writes_sheet_and_html(
    failed_run: SyntheticRun, tmp_path: Path
) -> None:
    sheet, page = tmp_path / "sheet.png", tmp_path / "page.html"
    res = CliRunner().invoke(
        app,
        ["inspect", str(failed_run.run_dir), "--sheet", str(sheet), "--html", str(page), "--thumb", "40"],
    )
    assert res.exit_code == 0, res.output
    for text in ("2008_000123_7", "truncated", "failures by reason", "00002", "GPU-seconds"):
        assert text in res.output
    assert "task totals (overlap the stages)" in res.output and "model loading 2.0" in res.output
    with Image.open(sheet) as img:
        assert img.format == "PNG"
        assert img.size == report.sheet_size(3, 2, 40)  # 3 samples with images, X = 2
        arr = np.asarray(img.convert("RGB"))
    assert arr.std() > 10  # pictures were drawn, not just the background
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 * (3 + 2)
    assert "2008_000123_7" in text and "truncated" in text and "2007_000039_20" in text
    assert "<h2>Seconds by stage</h2>" in text and "<td>task wall time</td><td>5.20</td>" in text


def test_sheet_size_and_cells(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS, num_aux=3)
    rows = report.sheet_rows(run.run_dir, max_samples=2)
    assert len(rows) == 2
    sheet = report.contact_sheet(rows, 3, thumb=32)
    assert sheet.shape == (report.sheet_size(2, 3, 32)[1], report.sheet_size(2, 3, 32)[0], 3)
    row = rows[0]
    s = run.sample(row.sample_id)
    assert row.support is not None and row.support.shape[:2] == row.mask.shape[:2]
    assert set(np.unique(row.mask)) <= {0, 128, 255} and (row.mask == 255).any()
    np.testing.assert_array_equal(row.condition, run.conditions[s.sample_id])
    for want, have in zip(run.aux[s.sample_id], row.aux, strict=True):
        np.testing.assert_array_equal(have, want)


def test_sample_choice_is_deterministic() -> None:
    ids = [f"s{i}" for i in range(50)]
    first = report.choose_samples(ids, 5)
    assert first == report.choose_samples(list(reversed(ids)), 5) and len(set(first)) == 5
    assert report.choose_samples(ids + ids, 5) == first
    assert report.choose_samples(ids, 100) == report.choose_samples(ids, 50)


def test_missing_support_files_leave_empty_cells_and_html_escapes(tmp_path: Path) -> None:
    run = make_run(tmp_path, [SampleSpec("x", 3, "<script>alert(1)</script>")], num_aux=1)
    Path(run.samples[0].image).unlink()  # the support lives on another machine
    rows = report.sheet_rows(run.run_dir)
    assert rows[0].support is None and rows[0].mask is not None
    report.contact_sheet(rows, 1, thumb=24)
    page = report.render_html(report.summarise(run.run_dir), rows)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_cli_inspect_json_and_errors(failed_run: SyntheticRun, tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["inspect", str(failed_run.run_dir), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["rows"] == 6 and data["failures"][0]["sample_id"] == "2008_000123_7"
    res = cli.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not found" in res.output


def test_seg_fallback_classes_counted_by_a_real_run(tmp_path: Path) -> None:
    """A class with no ADE20K mapping gets the fallback colour in a real seg run, and `inspect`
    counts it (issue: "counted in the summary, never a crash")."""
    import csv

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

    assert report.summarise(out).condition_fallbacks == {"flux capacitor": 1}
    result = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "'flux capacitor' has no ADE20K mapping: 1 sample(s)" in result.output


def test_sheet_size_formula_unchanged() -> None:
    """The inspect sheet keeps its geometry: header, per sample caption + cells + PAD, then PAD."""
    assert report.sheet_size(3, 2, 40) == (4 + 5 * (40 + 4), 18 + 3 * (14 + 40 + 4) + 4)
