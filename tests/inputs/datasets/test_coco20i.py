"""`build_coco20i` on the synthetic COCO tree: the fold rules, the splits and list files."""

from __future__ import annotations

import pytest
from _trees import (
    coco,
    sample_ids,
)

from difaug.inputs.datasets import (
    BuildError,
    SkipReason,
    build_coco20i,
)

__all__ = ["coco"]  # the fixtures, imported from the tree helpers


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
    assert sample_ids(result) == expected
    assert result.images_read == 2  # only val2014 for split=val
    assert result.skip_counts.get(SkipReason.NOT_SELECTED, 0) == not_selected
    assert result.skip_counts.get(SkipReason.TOO_SMALL, 0) == too_small
    assert {r["dataset"] for r in result.rows} == {"coco"}


def test_coco_train_split_interleaved(coco) -> None:
    result = build_coco20i(coco.root, fold=0, split="train")
    # train2014 only; fold-0 test classes (1 person, 21 elephant, 41 wine glass) are left out
    assert sample_ids(result) == ["COCO_train2014_000000000009_2", "COCO_train2014_000000000025_80"]
    assert [r["class_name"] for r in result.rows] == ["bicycle", "toothbrush"]
    assert result.skip_counts[SkipReason.NOT_SELECTED] == 3


def test_coco_no_split_reads_both_folders(coco) -> None:
    result = build_coco20i(coco.root)
    assert len(result.rows) == 9
    assert result.images_read == 4
    assert dict(result.skip_counts) == {SkipReason.TOO_SMALL: 1}


def test_coco_list_file(coco) -> None:
    result = build_coco20i(coco.root, list_file=coco.list_file, fold=0, split="train", fold_rule="contiguous")
    # contiguous fold 0 = 1..20 are test classes: person 1, bicycle 2 out; elephant 21, 41, 80 in
    assert sample_ids(result) == [
        "COCO_train2014_000000000009_21",
        "COCO_train2014_000000000025_41",
        "COCO_train2014_000000000025_80",
    ]


def test_coco_bad_fold_rule(coco) -> None:
    with pytest.raises(BuildError, match="unknown fold rule"):
        build_coco20i(coco.root, fold=0, split="val", fold_rule="random")
