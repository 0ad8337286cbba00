"""`build_folder`: a plain images/ + masks/ folder with one class, a classes CSV, or --binarize."""

from __future__ import annotations

from pathlib import Path

import pytest
from _trees import (
    make_folder_tree,
    sample_ids,
)

from difaug.core import imageio
from difaug.inputs.datasets import (
    BuildError,
    SkipReason,
    build_folder,
)
from difaug.inputs.datasets.folder import NO_CLASS


def test_folder_single_class(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    result = build_folder(tree.root, class_name="widget", split="train")
    assert sample_ids(result) == ["a_1", "b_1"]
    assert {(r["class_id"], r["class_name"], r["dataset"], r["split"]) for r in result.rows} == {
        (1, "widget", "folder", "train")
    }
    assert dict(result.skip_counts) == {
        SkipReason.MISSING_MASK: 1,
        SkipReason.MISSING_IMAGE: 1,
        SkipReason.EMPTY: 1,
    }
    empty = next(s for s in result.skipped if s.reason == SkipReason.EMPTY)
    assert empty.file.endswith("c.png") and "--binarize" in empty.detail


def test_folder_binarize_writes_masks(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    result = build_folder(tree.root, class_name="crack", class_id=3, binarize=128, mask_out=tmp_path / "bin")
    assert sample_ids(result) == ["c_3"]
    assert imageio.value_counts(imageio.load_mask(result.rows[0]["mask"])) == {0: 128 * 96 - 1600, 3: 1600}
    assert result.skip_counts[SkipReason.EMPTY] == 2  # the 0/1 masks have nothing >= 128


def test_folder_classes_csv(tmp_path: Path) -> None:
    tree = make_folder_tree(tmp_path)
    table = tmp_path / "classes.csv"
    table.write_text("class_id,class_name\n1,widget\n")
    assert sample_ids(build_folder(tree.root, classes=table)) == ["a_1", "b_1"]
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
