"""`build_pascal5i` (and `class_id_masks`, which it shares with COCO) on the synthetic PASCAL tree:
exact rows and skip reasons, worked out by hand from the rules in the module docstrings."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from _trees import (
    class_mask,
    coco,
    pascal,
    sample_ids,
    save_image,
    save_mask,
)

from difaug.inputs.datasets import (
    BuildError,
    SkipReason,
    build_coco20i,
    build_pascal5i,
)

__all__ = ["coco", "pascal"]  # the fixtures, imported from the tree helpers


def test_pascal_fold0_val_with_list_exact(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val")
    assert sample_ids(result) == ["2007_000001_1", "2007_000002_3", "2007_000003_5", "2007_000007_4"]
    assert [(r["class_name"], r["dataset"], r["split"], r["fold"]) for r in result.rows] == [
        ("airplane", "pascal", "val", 0),
        ("bird", "pascal", "val", 0),
        ("bottle", "pascal", "val", 0),
        ("boat", "pascal", "val", 0),
    ]
    assert result.rows[2]["image"].endswith("JPEGImages/2007_000003.png")  # the leading-slash line
    assert result.images_read == 9  # 9 non-blank lines, the duplicate included
    assert dict(result.skip_counts) == {
        SkipReason.NOT_SELECTED: 3,  # person (twice: the duplicated line), television
        SkipReason.TOO_SMALL: 1,  # bicycle, 400 px
        SkipReason.MISSING_MASK: 1,  # 2007_000004
        SkipReason.UNREADABLE_IMAGE: 1,  # truncated 2007_000005.jpg
        SkipReason.EMPTY: 1,  # 2007_000006: only 0 and 255
        SkipReason.UNKNOWN_CLASS: 1,  # value 30 in 2007_000007
        SkipReason.SIZE_MISMATCH: 1,  # 2007_000008
        SkipReason.DUPLICATE: 1,  # the second 2007_000001 line
    }
    by_reason = {s.reason: s for s in result.skipped}
    assert by_reason[SkipReason.MISSING_MASK].file.endswith("SegmentationClassAug/2007_000004.png")
    assert by_reason[SkipReason.UNREADABLE_IMAGE].file.endswith("JPEGImages/2007_000005.jpg")
    assert by_reason[SkipReason.SIZE_MISMATCH].detail == "image 128×96, mask 80×80"
    assert by_reason[SkipReason.TOO_SMALL].class_id == 2
    assert by_reason[SkipReason.UNKNOWN_CLASS].class_id == 30
    assert "2007_000001_1" in by_reason[SkipReason.DUPLICATE].detail


def test_pascal_fold0_train_with_list(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="train")
    assert sample_ids(result) == ["2007_000001_15", "2007_000003_20"]
    assert [r["class_name"] for r in result.rows] == ["person", "television"]
    # fold-0 test classes left out: airplane (000001, listed twice), bicycle + bird (000002),
    # bottle (000003), boat (000007)
    assert result.skip_counts[SkipReason.NOT_SELECTED] == 6
    assert result.skip_counts[SkipReason.DUPLICATE] == 1
    assert SkipReason.TOO_SMALL not in result.skip_counts  # bicycle is not selected before its size matters


def test_pascal_all_pairs_without_list(pascal) -> None:
    result = build_pascal5i(pascal.root)
    # masks drive the scan: 2007_000004 has no mask, so it is an unlabelled image, not a problem
    assert sample_ids(result) == [
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
        SkipReason.TOO_SMALL: 1,
        SkipReason.UNREADABLE_IMAGE: 1,
        SkipReason.EMPTY: 1,
        SkipReason.UNKNOWN_CLASS: 1,
        SkipReason.SIZE_MISMATCH: 1,
    }


def test_pascal_min_area_zero_keeps_small_objects(pascal) -> None:
    result = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=0)
    assert "2007_000002_2" in sample_ids(result)
    assert SkipReason.TOO_SMALL not in result.skip_counts


def test_pascal_min_area_boundary(pascal) -> None:
    # bottle covers exactly 42×50 = 2100 px: kept at 2100, dropped at 2101
    keep = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=2100)
    drop = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", min_area=2101)
    assert "2007_000003_5" in sample_ids(keep)
    assert "2007_000003_5" not in sample_ids(drop)


def test_pascal_falls_back_to_segmentation_class(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    save_image(root / "JPEGImages" / "x.jpg")
    save_mask(root / "SegmentationClass" / "x.png", class_mask({7: (1, 1, 50, 50)}), "palette")
    assert sample_ids(build_pascal5i(root)) == ["x_7"]
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


def test_filter_intersection_as_bams_training_lists(pascal) -> None:
    # BAM make_dataset(filter_intersection=True): an image with any class outside sub_list is dropped.
    train = build_pascal5i(
        pascal.root, list_file=pascal.list_file, fold=0, split="train", filter_intersection=True
    )
    plain = build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="train")
    assert "2007_000001_15" in sample_ids(plain) and "2007_000001_15" not in sample_ids(
        train
    )  # it shows airplane (1)
    assert "2007_000003_20" in sample_ids(plain) and "2007_000003_20" not in sample_ids(train)  # bottle (5)
    assert train.skip_counts[SkipReason.NOVEL_IN_IMAGE] > 0
    with pytest.raises(BuildError, match="filter_intersection needs"):
        build_pascal5i(pascal.root, list_file=pascal.list_file, fold=0, split="val", filter_intersection=True)
