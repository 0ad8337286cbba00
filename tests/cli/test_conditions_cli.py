"""`difaug conditions` and the preview writer: files, contact sheet, failures, names, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _conditions import hed_weights, sample, synthetic
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.conditions.preview import SHEET_NAME, output_names
from difaug.core.geometry import working_size
from difaug.inputs.manifest import read_manifest, write_manifest

__all__ = ["hed_weights"]  # the fixture, imported from the helpers

DEMO_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "demo" / "manifest.csv"


def _manifest(folder: Path) -> Path:
    """Three good rows (one with an unmapped class and a path-like id) and one with a missing file."""
    rows = []
    for i, (w, h) in enumerate([(120, 90), (80, 100), (64, 64)]):
        image, mask = synthetic(w, h, seed=i, class_id=12)
        Image.fromarray(image).save(folder / f"img{i}.png")
        Image.fromarray(mask).save(folder / f"mask{i}.png")
        rows.append(
            {
                "sample_id": ["../evil/id", "dog_12", "contact_sheet"][i],
                "image": f"img{i}.png",
                "mask": f"mask{i}.png",
                "class_id": 12,
                "class_name": ["dog", "dog", "flux capacitor"][i],
                "dataset": ["pascal", "pascal", "folder"][i],
            }
        )
    rows.append({"image": "missing.png", "mask": "mask0.png", "class_id": 12, "class_name": "dog"})
    path = folder / "manifest.csv"
    write_manifest(rows, path)
    return path


def _is_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return img.size


def test_preview_names_are_plain_stems_made_distinct() -> None:
    names = output_names([sample("a/b", row=1), sample("a_b", row=2), sample(SHEET_NAME, row=3)])
    assert names == {"a/b": "a_b", "a_b": "a_b-r2", SHEET_NAME: f"{SHEET_NAME}-r3"}


def test_cli_seg_writes_conditions_and_reports_failures(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["conditions", "--manifest", str(manifest), "--condition", "seg", "--out", str(out),
              "--resolution", "128", "--detect-resolution", "128"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    text = result.output.replace("\n", "")  # rich folds long lines at the terminal width
    assert "row 4" in text and "missing.png" in text
    assert "flux capacitor" in text  # the fallback is reported
    written = sorted(p.name for p in out.iterdir())
    assert written == ["__evil_id.png", "contact_sheet-r3.png", "contact_sheet.png", "dog_12.png"]
    assert _is_png(out / "dog_12.png") == working_size(80, 100, 128)
    _, sheet_h = _is_png(out / "contact_sheet.png")
    assert sheet_h == 3 * 128 + 2 * 4  # three rows of fixed-height thumbnails
    assert not (tmp_path.parent / "evil").exists()


def test_cli_hed_with_limit_and_local_weights(tmp_path: Path, hed_weights: Path) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "hed"
    args = ["conditions", "-m", str(manifest), "-c", "hed", "-o", str(out), "--limit", "2"]
    args += [
        "--hed-weights",
        str(hed_weights),
        "--resolution",
        "128",
        "--detect-resolution",
        "128",
        "--batch-size",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["__evil_id.png", "contact_sheet.png", "dog_12.png"]
    edge = np.asarray(Image.open(out / "dog_12.png"))
    w, h = working_size(80, 100, 128)
    assert edge.shape == (h, w, 3) and edge.any() and not edge.all()
    _is_png(out / "contact_sheet.png")
    # same manifest and options → the same bytes
    again = tmp_path / "again"
    args[args.index("-o") + 1] = str(again)
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (again / "dog_12.png").read_bytes() == (out / "dog_12.png").read_bytes()


def test_cli_missing_weights_is_one_clear_error(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    args = ["conditions", "-m", str(manifest), "-c", "scribble", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--hed-weights", str(tmp_path / "nowhere")])
    text = result.output.replace("\n", "")
    assert result.exit_code == 2
    assert "ControlNetHED.pth" in text and "--hed-weights" in text and "nowhere" in text
    assert "Traceback" not in text
    bad = CliRunner().invoke(app, [*args, "--condition-style", "fancy"])
    assert bad.exit_code == 2 and "style" in bad.output


@pytest.mark.skipif(not DEMO_MANIFEST.is_file(), reason="demo manifest not built in this checkout")
@pytest.mark.parametrize("condition", ["seg", "hed"])
def test_cli_on_demo_set(tmp_path: Path, hed_weights: Path, condition: str) -> None:
    samples = read_manifest(DEMO_MANIFEST).samples[:3]
    args = ["conditions", "-m", str(DEMO_MANIFEST), "-c", condition, "-o", str(tmp_path), "-n", "3"]
    result = CliRunner().invoke(
        app, [*args, "--hed-weights", str(hed_weights), "--resolution", "128", "--detect-resolution", "128"]
    )
    assert result.exit_code == 0, result.output
    names = output_names(samples)
    for s in samples:
        if s.row <= 3:
            _is_png(tmp_path / f"{names[s.sample_id]}.png")
    _is_png(tmp_path / "contact_sheet.png")


def test_duplicate_ids_and_empty_masks_are_reported_not_written(tmp_path: Path) -> None:
    image, mask = synthetic(96, 64, seed=0, class_id=12)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    row = {"sample_id": "dog_12", "image": "img.png", "mask": "mask.png", "class_id": 12, "class_name": "dog"}
    no_fg = {**row, "sample_id": "cat_8", "class_id": 8, "class_name": "cat"}
    write_manifest([row, row, no_fg], tmp_path / "m.csv")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["conditions", "-m", str(tmp_path / "m.csv"), "-c", "seg", "-o", str(out), "--resolution", "64"],
        terminal_width=200,
    )
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "duplicate sample_id 'dog_12' (first at row 1)" in said
    assert "mask has no pixel with class_id 8" in said
    assert sorted(p.name for p in out.iterdir()) == [f"{SHEET_NAME}.png", "dog_12.png"]
