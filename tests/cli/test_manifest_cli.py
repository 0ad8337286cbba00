"""`difaug manifest build`: the builders through the CLI, their summary, skip report and errors."""

from __future__ import annotations

import csv
from pathlib import Path

from _trees import (
    coco,
    make_folder_tree,
    make_fss_tree,
    pascal,
    write_list,
)
from typer.testing import CliRunner

from difaug.cli import app
from difaug.inputs.datasets import (
    SkipReason,
)
from difaug.inputs.manifest import read_manifest

__all__ = ["coco", "pascal"]  # the fixtures, imported from the tree helpers


def test_cli_build_pascal5i_fold0_val_exact(tmp_path: Path, pascal) -> None:
    out = tmp_path / "m.csv"
    args = ["manifest", "build", "pascal5i", "--root", str(pascal.root), "--list", str(pascal.list_file)]
    res = CliRunner().invoke(app, [*args, "--fold", "0", "--split", "val", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [(r["sample_id"], r["class_id"], r["class_name"], r["split"], r["fold"]) for r in rows] == [
        ("2007_000001_1", "1", "airplane", "val", "0"),
        ("2007_000002_3", "3", "bird", "val", "0"),
        ("2007_000003_5", "5", "bottle", "val", "0"),
        ("2007_000007_4", "4", "boat", "val", "0"),
    ]
    assert (
        Path(rows[0]["image"]) == pascal.root / "JPEGImages" / "2007_000001.jpg"
    )  # root elsewhere: absolute
    for text in (
        "9 image(s) read",
        "4 row(s)",
        "too small",
        "missing mask",
        "unreadable image",
        "duplicate sample_id",
    ):
        assert text in res.output, text
    assert CliRunner().invoke(app, ["manifest", "validate", str(out)]).exit_code == 0


def test_cli_build_writes_skip_report(tmp_path: Path, pascal) -> None:
    report = tmp_path / "skipped.csv"
    res = CliRunner().invoke(
        app,
        ["manifest", "build", "pascal5i", "--root", str(pascal.root), "--list", str(pascal.list_file),
         "--out", str(tmp_path / "m.jsonl"), "--skipped", str(report)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    reasons = sorted(r["reason"] for r in csv.DictReader(report.open()))
    assert reasons == sorted(
        [
            SkipReason.TOO_SMALL,
            SkipReason.MISSING_MASK,
            SkipReason.UNREADABLE_IMAGE,
            SkipReason.EMPTY,
            SkipReason.UNKNOWN_CLASS,
            SkipReason.SIZE_MISMATCH,
        ]
        + [SkipReason.DUPLICATE] * 2  # 2007_000001 listed twice: both of its classes repeat
    )


def test_cli_build_coco_fss_folder(tmp_path: Path, coco) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["manifest", "build", "coco20i", "--root", str(coco.root), "--fold", "0", "--split", "val",
         "--fold-rule", "contiguous", "--out", str(tmp_path / "c.parquet")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [s.sample_id for s in read_manifest(tmp_path / "c.parquet").samples] == [
        "COCO_val2014_000000000042_5",
        "COCO_val2014_000000000042_20",
    ]
    fss = make_fss_tree(tmp_path)
    res = runner.invoke(
        app, ["manifest", "build", "fss1000", "--root", str(fss.root), "--out", str(tmp_path / "f.csv")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "f_masks" / "ac_wall" / "1.png").is_file()  # the default --mask-out
    assert "anti-aliased" in res.output
    folder = make_folder_tree(tmp_path)
    res = runner.invoke(
        app,
        ["manifest", "build", "folder", "--root", str(folder.root), "--class-name", "widget",
         "--out", str(tmp_path / "w.csv")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(read_manifest(tmp_path / "w.csv").samples) == 2


def test_cli_build_errors(tmp_path: Path, pascal) -> None:
    runner = CliRunner()
    base = ["manifest", "build", "pascal5i", "--root", str(pascal.root)]
    bad_suffix = runner.invoke(app, [*base, "--out", str(tmp_path / "m.txt")])
    assert bad_suffix.exit_code == 2
    no_split = runner.invoke(app, [*base, "--fold", "0", "--out", str(tmp_path / "m.csv")])
    assert no_split.exit_code == 2
    # nothing survives: fold 2 val wants classes 11..15, and the only person is not in the list
    only = write_list(
        tmp_path / "one.txt", ["JPEGImages/2007_000006.jpg SegmentationClassAug/2007_000006.png"]
    )
    empty = runner.invoke(app, [*base, "--list", str(only), "--out", str(tmp_path / "e.csv")])
    assert empty.exit_code == 1
    assert not (tmp_path / "e.csv").exists()
    assert "empty foreground" in empty.output
