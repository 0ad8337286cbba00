"""`difaug segment` (DiffSeg zero-shot masks + mIoU) and `difaug score` / `inspect` on the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.inputs.manifest import read_manifest

pytest.importorskip("torch")


def test_segment_a_manifest_writes_label_maps_miou_and_a_sheet(
    tmp_path: Path, tiny_models: Path, demo_manifest: Path
) -> None:
    out = tmp_path / "seg"
    sheet = tmp_path / "sheet.png"
    args = ["segment", "--manifest", str(demo_manifest), "--out", str(out), "--model", str(tiny_models)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--sheet", str(sheet), "--limit", "3"])
    assert result.exit_code == 0, result.output
    samples = read_manifest(demo_manifest).samples
    written = sorted(out.glob("*.png"))
    assert len(written) == 3
    for path in written:
        sample = next(s for s in samples if s.sample_id == path.stem)
        labels = np.asarray(Image.open(path))
        assert labels.shape == np.asarray(Image.open(sample.image)).shape[:2]  # at the image's size
    assert "mIoU" in result.output and "pixel accuracy" in result.output
    assert sheet.is_file() and Image.open(sheet).size[0] > 0


def test_segment_an_image_folder_has_no_miou(tmp_path: Path, tiny_models: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 56), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "seg"
    result = CliRunner().invoke(
        app,
        [
            "segment",
            "--images",
            str(folder),
            "--out",
            str(out),
            "--model",
            str(tiny_models),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png"]
    assert np.asarray(Image.open(out / "im0.png")).shape == (40, 56)
    assert "mIoU" not in result.output


def test_segment_needs_exactly_one_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["segment", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of" in result.output


def test_score_then_inspect_shows_the_distribution(tmp_path: Path, tiny_models: Path) -> None:
    from _runs import make_run

    # The run's own model is what `score` loads.
    synth = make_run(tmp_path, num_aux=2, shard_size=3, model=str(tiny_models))
    runner = CliRunner()
    before = runner.invoke(app, ["inspect", str(synth.run_dir)])
    assert before.exit_code == 0 and "none of" in before.output

    scored = runner.invoke(app, ["score", str(synth.run_dir), "--device", "cpu"])
    assert scored.exit_code == 0, scored.output
    assert "scored 10 aux images in 2 shard(s)" in scored.output
    again = runner.invoke(app, ["score", str(synth.run_dir), "--device", "cpu"])
    assert "scored 0 aux images" in again.output and "2 shard(s) already scored" in again.output

    sheet, page = tmp_path / "sheet.png", tmp_path / "index.html"
    shown = runner.invoke(
        app, ["inspect", str(synth.run_dir), "--sheet", str(sheet), "--html", str(page), "--lowest", "3"]
    )
    assert shown.exit_code == 0, shown.output
    assert "10 / 10 scored" in shown.output and "│" in shown.output  # numbers and text histogram
    assert (tmp_path / "sheet-lowest.png").is_file()
    html = page.read_text()
    assert "drift_iou histogram" in html and "Lowest drift scores (3)" in html
