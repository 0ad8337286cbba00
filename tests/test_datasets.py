"""Manifest builders on synthetic trees: exact rows, exact skip reasons, fold rules, the CLI.

The trees (tests/_trees.py) hold the awkward cases real data has; every expected row below is
worked out by hand from the builder rules in the module docstrings.
"""

from __future__ import annotations

import csv
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
from _trees import (
    H,
    W,
    class_mask,
    make_coco_tree,
    make_folder_tree,
    make_fss_tree,
    make_pascal_tree,
    save_image,
    save_mask,
    write_list,
)
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.core import imageio
from difaug.inputs.datasets import (
    BuildError,
    SkipReason,
    build_coco20i,
    build_folder,
    build_fss1000,
    build_pascal5i,
    fold_classes,
    read_list_file,
    select_classes,
    stable_class_ids,
)
from difaug.inputs.datasets.folder import NO_CLASS
from difaug.inputs.datasets.fss1000 import MISSING_CLASS_DIR
from difaug.inputs.manifest import read_manifest, validate_manifest

R = SkipReason


def ids(result) -> list[str]:
    return [r["sample_id"] for r in result.rows]


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory):
    return make_pascal_tree(tmp_path_factory.mktemp("pascal"))


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory):
    return make_coco_tree(tmp_path_factory.mktemp("coco"))


# --------------------------------------------------------------------------------------------------
# Fold rules and list files


def test_pascal_fold_classes() -> None:
    assert [fold_classes(20, i, "contiguous") for i in range(4)] == [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15],
        [16, 17, 18, 19, 20],
    ]


def test_coco_fold_rules() -> None:
    assert fold_classes(80, 0, "interleaved") == list(range(1, 78, 4))
    assert fold_classes(80, 3, "interleaved") == [4 * k + 4 for k in range(20)]
    assert fold_classes(80, 1, "contiguous") == list(range(21, 41))
    every = sorted(c for i in range(4) for c in fold_classes(80, i, "interleaved"))
    assert every == list(range(1, 81))  # the four folds partition the 80 classes


def test_select_classes() -> None:
    assert select_classes(20, None, None) == (None, "")
    assert select_classes(20, None, "val") == (None, "val")
    assert select_classes(20, 2, "val") == ({11, 12, 13, 14, 15}, "val")
    train, split = select_classes(20, 2, "train")
    assert split == "train" and train == set(range(1, 21)) - {11, 12, 13, 14, 15}
    with pytest.raises(BuildError, match="needs --split"):
        select_classes(20, 0, None)
    with pytest.raises(BuildError, match="unknown split"):
        select_classes(20, 0, "dev")
    with pytest.raises(BuildError, match="fold must be"):
        select_classes(20, 4, "val")


def test_read_list_file_tolerates_real_world_lists(tmp_path: Path) -> None:
    lst = write_list(
        tmp_path / "l.txt",
        [
            "JPEGImages/a.jpg SegmentationClassAug/a.png",
            "",
            "/JPEGImages/b.jpg\t/SegmentationClassAug/b.png   ",
            "2007_000123",
            "JPEGImages/c.jpg",
            "one two three",
        ],
    )
    entries, bad = read_list_file(lst)
    assert [(e.line, e.image, e.mask, e.stem) for e in entries] == [
        (1, "JPEGImages/a.jpg", "SegmentationClassAug/a.png", "a"),
        (3, "JPEGImages/b.jpg", "SegmentationClassAug/b.png", "b"),
        (4, "", "", "2007_000123"),
        (5, "JPEGImages/c.jpg", "", "c"),
    ]
    assert [(b.reason, b.file.endswith("l.txt:6")) for b in bad] == [(R.BAD_LIST_LINE, True)]
    with pytest.raises(BuildError, match="list file not found"):
        read_list_file(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------------
# PASCAL-5i


def test_pascal_fold0_val_with_list_exact(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val")
    assert ids(result) == ["2007_000001_1", "2007_000002_3", "2007_000003_5", "2007_000007_4"]
    assert [(r["class_name"], r["dataset"], r["split"], r["fold"]) for r in result.rows] == [
        ("airplane", "pascal", "val", 0),
        ("bird", "pascal", "val", 0),
        ("bottle", "pascal", "val", 0),
        ("boat", "pascal", "val", 0),
    ]
    assert result.rows[2]["image"].endswith("JPEGImages/2007_000003.png")  # the leading-slash line
    assert result.images_read == 9  # 9 non-blank lines, the duplicate included
    assert dict(result.skip_counts) == {
        R.NOT_SELECTED: 3,  # person (twice: the duplicated line), television
        R.TOO_SMALL: 1,  # bicycle, 400 px
        R.MISSING_MASK: 1,  # 2007_000004
        R.UNREADABLE_IMAGE: 1,  # truncated 2007_000005.jpg
        R.EMPTY: 1,  # 2007_000006: only 0 and 255
        R.UNKNOWN_CLASS: 1,  # value 30 in 2007_000007
        R.SIZE_MISMATCH: 1,  # 2007_000008
        R.DUPLICATE: 1,  # the second 2007_000001 line
    }
    by_reason = {s.reason: s for s in result.skipped}
    assert by_reason[R.MISSING_MASK].file.endswith("SegmentationClassAug/2007_000004.png")
    assert by_reason[R.UNREADABLE_IMAGE].file.endswith("JPEGImages/2007_000005.jpg")
    assert by_reason[R.SIZE_MISMATCH].detail == "image 128×96, mask 80×80"
    assert by_reason[R.TOO_SMALL].class_id == 2
    assert by_reason[R.UNKNOWN_CLASS].class_id == 30
    assert "2007_000001_1" in by_reason[R.DUPLICATE].detail


def test_pascal_fold0_train_with_list(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="train")
    assert ids(result) == ["2007_000001_15", "2007_000003_20"]
    assert [r["class_name"] for r in result.rows] == ["person", "television"]
    # fold-0 test classes left out: airplane (000001, listed twice), bicycle + bird (000002),
    # bottle (000003), boat (000007)
    assert result.skip_counts[R.NOT_SELECTED] == 6
    assert result.skip_counts[R.DUPLICATE] == 1
    assert R.TOO_SMALL not in result.skip_counts  # bicycle is not selected before its size matters


def test_pascal_all_pairs_without_list(pascal) -> None:
    result = build_pascal5i(pascal.root)
    # masks drive the scan: 2007_000004 has no mask, so it is an unlabelled image, not a problem
    assert ids(result) == [
        "2007_000001_1",
        "2007_000001_15",
        "2007_000002_3",
        "2007_000003_5",
        "2007_000003_20",
        "2007_000007_4",
        "2007_000009_12",
    ]
    assert all(r["split"] == "" and r["fold"] is None for r in result.rows)
    assert dict(result.skip_counts) == {
        R.TOO_SMALL: 1,
        R.UNREADABLE_IMAGE: 1,
        R.EMPTY: 1,
        R.UNKNOWN_CLASS: 1,
        R.SIZE_MISMATCH: 1,
    }


def test_pascal_min_area_zero_keeps_small_objects(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=0)
    assert "2007_000002_2" in ids(result)
    assert R.TOO_SMALL not in result.skip_counts


def test_pascal_min_area_boundary(pascal) -> None:
    # bottle covers exactly 42×50 = 2100 px: kept at 2100, dropped at 2101
    keep = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=2100)
    drop = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=2101)
    assert "2007_000003_5" in ids(keep)
    assert "2007_000003_5" not in ids(drop)


def test_pascal_falls_back_to_segmentation_class(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    save_image(root / "JPEGImages" / "x.jpg")
    save_mask(root / "SegmentationClass" / "x.png", class_mask({7: (1, 1, 50, 50)}), "palette")
    assert ids(build_pascal5i(root)) == ["x_7"]
    with pytest.raises(BuildError, match="mask folder not found"):
        build_pascal5i(root, mask_dir="nope")
    bare = tmp_path / "bare"
    (bare / "JPEGImages").mkdir(parents=True)
    with pytest.raises(BuildError, match="no mask folder"):
        build_pascal5i(bare)


def test_pascal_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="dataset root not found"):
        build_pascal5i(tmp_path / "nowhere")


def test_class_id_builders_hand_on_exactly_the_declared_options(pascal, coco) -> None:
    from typing import get_type_hints

    from difaug.inputs.datasets.class_id_masks import ClassIdOptions, build_class_id_masks

    # Every option a builder hands on is a keyword of the shared builder, with a default there.
    shared = inspect.signature(build_class_id_masks).parameters
    for name in get_type_hints(ClassIdOptions):
        assert shared[name].default is not inspect.Parameter.empty, name
    # A misspelt option is refused, not dropped silently.
    for build, root in ((build_pascal5i, pascal.root), (build_coco20i, coco.root)):
        with pytest.raises(TypeError, match="min_aera"):
            build(root, min_aera=0)


def test_builder_output_is_deterministic(pascal) -> None:
    a = build_pascal5i(pascal.root, list_file=pascal.list_file, workers=1)
    b = build_pascal5i(pascal.root, list_file=pascal.list_file, workers=7)
    assert a.rows == b.rows
    assert a.skipped == b.skipped


# --------------------------------------------------------------------------------------------------
# COCO-20i


@pytest.mark.parametrize(
    ("fold", "rule", "expected", "not_selected", "too_small"),
    [
        # interleaved fold 0 = {1, 5, 9, …, 77}: airplane 5, dining table 61, scissors 77
        (0, "interleaved", ["COCO_val2014_000000000042_5", "COCO_val2014_000000000042_61",
                            "COCO_val2014_000000000073_77"], 2, 0),
        # contiguous fold 0 = 1..20: airplane 5, cow 20; motorcycle 4 is too small
        (0, "contiguous", ["COCO_val2014_000000000042_5", "COCO_val2014_000000000042_20"], 2, 1),
        # interleaved fold 3 = {4, 8, …, 80}: cow 20; motorcycle 4 too small
        (3, "interleaved", ["COCO_val2014_000000000042_20"], 3, 1),
        # contiguous fold 3 = 61..80: dining table 61, scissors 77
        (3, "contiguous", ["COCO_val2014_000000000042_61", "COCO_val2014_000000000073_77"], 3, 0),
    ],
)  # fmt: skip
def test_coco_fold_rules_select_val_rows(coco, fold, rule, expected, not_selected, too_small) -> None:
    result = build_coco20i(coco.root, fold=fold, split="val", fold_rule=rule)
    assert ids(result) == expected
    assert result.images_read == 2  # only val2014 for split=val
    assert result.skip_counts.get(R.NOT_SELECTED, 0) == not_selected
    assert result.skip_counts.get(R.TOO_SMALL, 0) == too_small
    assert {r["dataset"] for r in result.rows} == {"coco"}


def test_coco_train_split_interleaved(coco) -> None:
    result = build_coco20i(coco.root, fold=0, split="train")
    # train2014 only; fold-0 test classes (1 person, 21 elephant, 41 wine glass) are left out
    assert ids(result) == ["COCO_train2014_000000000009_2", "COCO_train2014_000000000025_80"]
    assert [r["class_name"] for r in result.rows] == ["bicycle", "toothbrush"]
    assert result.skip_counts[R.NOT_SELECTED] == 3


def test_coco_no_split_reads_both_folders(coco) -> None:
    result = build_coco20i(coco.root)
    assert len(result.rows) == 9
    assert result.images_read == 4
    assert dict(result.skip_counts) == {R.TOO_SMALL: 1}


def test_coco_list_file(coco) -> None:
    result = build_coco20i(coco.root, list_file=coco.list_file, fold=0, split="train", fold_rule="contiguous")
    # contiguous fold 0 = 1..20 are test classes: person 1, bicycle 2 out; elephant 21, 41, 80 in
    assert ids(result) == [
        "COCO_train2014_000000000009_21",
        "COCO_train2014_000000000025_41",
        "COCO_train2014_000000000025_80",
    ]


def test_coco_bad_fold_rule(coco) -> None:
    with pytest.raises(BuildError, match="unknown fold rule"):
        build_coco20i(coco.root, fold=0, split="val", fold_rule="random")


# --------------------------------------------------------------------------------------------------
# FSS-1000


def test_fss1000_rows_masks_and_skips(tmp_path: Path) -> None:
    tree = make_fss_tree(tmp_path)
    out = tmp_path / "fss_masks"
    result = build_fss1000(tree.root, mask_out=out, split="test")
    widget_id = stable_class_ids(["my_widget"])["my_widget"]
    assert widget_id > 1000
    assert [(r["sample_id"], r["class_id"], r["class_name"]) for r in result.rows] == [
        ("ac_wall_1", 20, "ac wall"),
        ("ac_wall_2", 20, "ac wall"),
        ("ac_wall_3", 20, "ac wall"),
        ("my_widget_1", widget_id, "my widget"),
    ]
    assert {(r["dataset"], r["split"], r["fold"]) for r in result.rows} == {("fss1000", "test", None)}
    assert dict(result.skip_counts) == {R.MISSING_IMAGE: 1, R.MISSING_MASK: 1, R.EMPTY: 1}
    assert result.images_read == 6  # 4 in ac_wall + 2 in my_widget
    # written masks hold exactly 0 / class_id, and mask == class_id is HSNet's (luma >= 128)
    clean = imageio.load_mask(out / "ac_wall" / "1.png")
    assert imageio.value_counts(clean) == {0: 128 * 96 - 2500, 20: 2500}
    aa = imageio.load_mask(out / "ac_wall" / "2.png")
    assert imageio.value_counts(aa) == {0: 128 * 96 - 52 * 52, 20: 52 * 52}  # the 128 ring in, 127 out
    rgb = imageio.load_mask(out / "ac_wall" / "3.png")
    assert int((rgb == 20).sum()) == 30 * 40
    widget = imageio.load_mask(out / "my_widget" / "1.png")  # id > 255: a 16-bit PNG
    assert imageio.value_counts(widget) == {0: 128 * 96 - 400, widget_id: 400}
    assert "1 of them had anti-aliased pixels (416 px" in result.notes[0]
    assert "my_widget" in result.notes[1]


def test_fss1000_threshold_and_class_list(tmp_path: Path) -> None:
    tree = make_fss_tree(tmp_path)
    high = build_fss1000(tree.root, mask_out=tmp_path / "m", threshold=200)
    aa = next(r for r in high.rows if r["sample_id"] == "ac_wall_2")
    assert int((imageio.load_mask(aa["mask"]) == 20).sum()) == 2500  # both rings out
    lst = tmp_path / "classes.txt"
    lst.write_text("my_widget\r\nno_such_class\r\n\r\n")
    listed = build_fss1000(tree.root, mask_out=tmp_path / "m2", list_file=lst)
    assert ids(listed) == ["my_widget_1"]
    assert listed.skip_counts[MISSING_CLASS_DIR] == 1


def test_fss1000_gazelle_never_gets_the_ignore_id(tmp_path: Path) -> None:
    # The FSS-1000 table gives "gazelle" id 255, the ignore value of every mask.
    root = tmp_path / "fss"
    save_image(root / "gazelle" / "1.jpg")
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[10:60, 20:90] = 255
    Image.fromarray(mask).save(root / "gazelle" / "1.png")
    result = build_fss1000(root, mask_out=tmp_path / "masks")
    assert [(r["class_id"], r["class_name"]) for r in result.rows] == [(1255, "gazelle")]
    manifest = tmp_path / "fss.csv"
    result.write(manifest)
    assert validate_manifest(read_manifest(manifest)) == []


def test_stable_class_ids_do_not_depend_on_neighbours() -> None:
    alone = stable_class_ids(["zzz_custom"])
    together = stable_class_ids(["aaa_other", "zzz_custom", "ac_wall"])
    assert alone["zzz_custom"] == together["zzz_custom"]
    assert together["ac_wall"] == 20


# --------------------------------------------------------------------------------------------------
# Plain folder


def test_folder_single_class(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    result = build_folder(tree.root, class_name="widget", split="train")
    assert ids(result) == ["a_1", "b_1"]
    assert {(r["class_id"], r["class_name"], r["dataset"], r["split"]) for r in result.rows} == {
        (1, "widget", "folder", "train")
    }
    assert dict(result.skip_counts) == {R.MISSING_MASK: 1, R.MISSING_IMAGE: 1, R.EMPTY: 1}
    empty = next(s for s in result.skipped if s.reason == R.EMPTY)
    assert empty.file.endswith("c.png") and "--binarize" in empty.detail


def test_folder_binarize_writes_masks(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    result = build_folder(tree.root, class_name="crack", class_id=3, binarize=128, mask_out=tmp_path / "bin")
    assert ids(result) == ["c_3"]
    assert imageio.value_counts(imageio.load_mask(result.rows[0]["mask"])) == {0: 128 * 96 - 1600, 3: 1600}
    assert result.skip_counts[R.EMPTY] == 2  # the 0/1 masks have nothing >= 128


def test_folder_classes_csv(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    table = tmp_path / "classes.csv"
    table.write_text("class_id,class_name\n1,widget\n")
    assert ids(build_folder(tree.root, classes=table)) == ["a_1", "b_1"]
    per_image = tmp_path / "per_image.csv"
    per_image.write_text("class_id,class_name,image\n1,apple,a.jpg\n1,banana,b\n")
    result = build_folder(tree.root, classes=per_image)
    assert [(r["sample_id"], r["class_name"]) for r in result.rows] == [("a_1", "apple"), ("b_1", "banana")]
    assert result.skip_counts[NO_CLASS] == 1  # c has no entry and there is no table


def test_folder_refuses_ambiguous_or_ignore_class(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    with pytest.raises(BuildError, match="either --class-name"):
        build_folder(tree.root)
    with pytest.raises(BuildError, match="255 is the ignore value"):
        build_folder(tree.root, class_name="x", class_id=255)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    with pytest.raises(BuildError, match="needs columns class_id,class_name"):
        build_folder(tree.root, classes=bad)


# --------------------------------------------------------------------------------------------------
# Every builder's output validates clean, in every format


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_built_manifests_validate_clean(tmp_path: Path, pascal, coco, suffix: str) -> None:
    results = [
        (build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val"), pascal.root),
        (build_coco20i(coco.root, fold=1, split="train"), coco.root),
        (build_fss1000(make_fss_tree(tmp_path).root, mask_out=tmp_path / "fm"), None),
        (build_folder(make_folder_tree(tmp_path).root, class_name="w"), None),
    ]
    for i, (result, root) in enumerate(results):
        out = result.write(tmp_path / f"m{i}{suffix}", root=root)
        manifest = read_manifest(out)
        assert [s.sample_id for s in manifest.samples] == ids(result)
        assert validate_manifest(manifest) == []


def test_written_paths_are_portable(tmp_path: Path, pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val")
    inside = result.write(pascal.root / "manifests" / "m.csv", root=pascal.root)
    rows = list(csv.DictReader(inside.open()))
    assert rows[0]["image"] == "../JPEGImages/2007_000001.jpg"
    elsewhere = result.write(tmp_path / "elsewhere" / "m.csv", root=pascal.root)
    assert Path(next(csv.DictReader(elsewhere.open()))["image"]).is_absolute()
    forced = result.write(pascal.root / "m_abs.csv", root=pascal.root, absolute=True)
    assert Path(next(csv.DictReader(forced.open()))["image"]).is_absolute()


# --------------------------------------------------------------------------------------------------
# CLI


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
        [R.TOO_SMALL, R.MISSING_MASK, R.UNREADABLE_IMAGE, R.EMPTY, R.UNKNOWN_CLASS, R.SIZE_MISMATCH]
        + [R.DUPLICATE] * 2  # 2007_000001 listed twice: both of its classes repeat
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


def test_palette_mask_values_are_indices_not_colours(tmp_path: Path) -> None:
    # A palette mask whose palette maps index 15 to some colour: the class is the index.
    path = save_mask(tmp_path / "p.png", class_mask({15: (1, 1, 5, 5)}, size=(10, 10)), "palette")
    assert 15 in imageio.value_counts(imageio.load_mask(path))
    assert np.asarray(imageio.load_mask(path)).max() == 255


# --------------------------------------------------------------------------------------------------
# HSNet split files, BAM's filter_intersection, HSNet's FSS-1000 ids


def test_hsnet_pascal_split_file_exact_format(tmp_path: Path, pascal) -> None:
    # juhongm999/hsnet data/splits/pascal/val/fold0.txt: `stem__NN` lines, a final newline;
    # data/pascal.py reads them as f.read().split('\n')[:-1] → [stem, int(NN) - 1].
    split = tmp_path / "val" / "fold0.txt"
    split.parent.mkdir()
    split.write_text("2007_000001__01\n2007_000002__03\n2007_000003__05\n2007_000007__04\n2007_000002__02\n")
    from difaug.inputs.datasets import detect_list_format, read_split_file

    assert detect_list_format(split) == "hsnet"
    entries, bad = read_split_file(split)
    assert not bad
    assert [(e.stem, e.class_id, e.image) for e in entries][:2] == [
        ("2007_000001", 1, "JPEGImages/2007_000001.jpg"),
        ("2007_000002", 3, "JPEGImages/2007_000002.jpg"),
    ]
    hsnet = [[d.split("__")[0], int(d.split("__")[1]) - 1] for d in split.read_text().split("\n")[:-1]]
    assert [[e.stem, e.class_id - 1] for e in entries] == hsnet

    result = build_pascal5i(pascal.root, list_file=split, fold=0, split="val", min_area=0)
    # Only the listed class of each image: 2007_000001 also shows person (15), which is not listed.
    # 2007_000003 is a .png: HSNet opens `{stem}.jpg`, so it is missing for HSNet as for us.
    assert ids(result) == ["2007_000001_1", "2007_000002_2", "2007_000002_3", "2007_000007_4"]
    assert result.skip_counts[R.NOT_LISTED] >= 1 and result.skip_counts[R.MISSING_IMAGE] == 1
    # The 400-px bicycle is HSNet's (no area rule) only with min_area 0; the default drops it.
    default = build_pascal5i(pascal.root, list_file=split, fold=0, split="val")
    assert "2007_000002_2" not in ids(default) and default.skip_counts[R.TOO_SMALL] == 1


def test_hsnet_split_lines_that_do_not_parse_and_absent_classes(tmp_path: Path, pascal) -> None:
    split = write_list(
        tmp_path / "fold0.txt", ["2007_000001__01", "2007_000001__09", "junk line"], crlf=False
    )
    result = build_pascal5i(pascal.root, list_file=split, list_format="hsnet", min_area=0)
    assert ids(result) == ["2007_000001_1"]
    assert result.skip_counts[R.BAD_LIST_LINE] == 1 and result.skip_counts[R.LISTED_ABSENT] == 1


def test_hsnet_coco_pickle_exact_format(tmp_path: Path, coco) -> None:
    import pickle

    # juhongm999/hsnet data/splits/coco/val/fold0.pkl: {0-based class: ['val2014/COCO_val2014_….jpg']};
    # data/coco.py reads the mask at annotations/<name minus .jpg>.png and the class as key + 1.
    pkl = tmp_path / "fold0.pkl"
    pkl.write_bytes(
        pickle.dumps(
            {4: ["val2014/COCO_val2014_000000000042.jpg"], 76: ["val2014/COCO_val2014_000000000073.jpg"]}
        )
    )
    from difaug.inputs.datasets import read_split_file

    entries, bad = read_split_file(pkl)
    assert not bad and [(e.image, e.mask, e.class_id) for e in entries] == [
        ("val2014/COCO_val2014_000000000042.jpg", "annotations/val2014/COCO_val2014_000000000042.png", 5),
        ("val2014/COCO_val2014_000000000073.jpg", "annotations/val2014/COCO_val2014_000000000073.png", 77),
    ]
    result = build_coco20i(coco.root, list_file=pkl, fold=0, split="val", min_area=0)
    assert ids(result) == ["COCO_val2014_000000000042_5", "COCO_val2014_000000000073_77"]


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, coco) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    pkl = tmp_path / "fold0.pkl"
    pkl.write_bytes(pickle.dumps({0: [Evil()]}))
    with pytest.raises(BuildError, match="not an HSNet split pickle"):
        build_coco20i(coco.root, list_file=pkl)


def test_filter_intersection_as_bams_training_lists(pascal) -> None:
    # BAM make_dataset(filter_intersection=True): an image with any class outside sub_list is dropped.
    train = build_pascal5i(
        pascal.root, list_file=pascal.list_file, fold=0, split="train", filter_intersection=True
    )
    plain = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="train")
    assert "2007_000001_15" in ids(plain) and "2007_000001_15" not in ids(train)  # it shows airplane (1)
    assert "2007_000003_20" in ids(plain) and "2007_000003_20" not in ids(train)  # bottle (5)
    assert train.skip_counts[R.NOVEL_IN_IMAGE] > 0
    with pytest.raises(BuildError, match="filter_intersection needs"):
        build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", filter_intersection=True)


def test_fss1000_hsnet_ids_need_a_split(tmp_path: Path) -> None:
    tree = make_fss_tree(tmp_path)
    names = write_list(tmp_path / "classes.txt", ["ac_wall"], crlf=False)
    with pytest.raises(BuildError, match="trn, val or test"):
        build_fss1000(tree.root, mask_out=tmp_path / "m", list_file=names, class_ids="hsnet")
    result = build_fss1000(
        tree.root, mask_out=tmp_path / "m", list_file=names, class_ids="hsnet", split="val"
    )
    assert {r["class_id"] for r in result.rows} == {521}  # index 0 of val + 520, + 1
