"""`difaug.inputs.datasets.common`: fold rules, class selection, list and split files (PFENet lists,
HSNet split files and pickles), portable paths, and that every builder's manifest validates clean."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from _trees import (
    class_mask,
    coco,
    make_folder_tree,
    make_fss_tree,
    pascal,
    sample_ids,
    save_mask,
    write_list,
)

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
)
from difaug.inputs.manifest import read_manifest, validate_manifest

__all__ = ["coco", "pascal"]  # the fixtures, imported from the tree helpers


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
    assert [(b.reason, b.file.endswith("l.txt:6")) for b in bad] == [(SkipReason.BAD_LIST_LINE, True)]
    with pytest.raises(BuildError, match="list file not found"):
        read_list_file(tmp_path / "missing.txt")


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
        assert [s.sample_id for s in manifest.samples] == sample_ids(result)
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


def test_palette_mask_values_are_indices_not_colours(tmp_path: Path) -> None:
    # A palette mask whose palette maps index 15 to some colour: the class is the index.
    path = save_mask(tmp_path / "p.png", class_mask({15: (1, 1, 5, 5)}, size=(10, 10)), "palette")
    assert 15 in imageio.value_counts(imageio.load_mask(path))
    assert np.asarray(imageio.load_mask(path)).max() == 255


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
    assert sample_ids(result) == ["2007_000001_1", "2007_000002_2", "2007_000002_3", "2007_000007_4"]
    assert (
        result.skip_counts[SkipReason.NOT_LISTED] >= 1 and result.skip_counts[SkipReason.MISSING_IMAGE] == 1
    )
    # The 400-px bicycle is HSNet's (no area rule) only with min_area 0; the default drops it.
    default = build_pascal5i(pascal.root, list_file=split, fold=0, split="val")
    assert "2007_000002_2" not in sample_ids(default) and default.skip_counts[SkipReason.TOO_SMALL] == 1


def test_hsnet_split_lines_that_do_not_parse_and_absent_classes(tmp_path: Path, pascal) -> None:
    split = write_list(
        tmp_path / "fold0.txt", ["2007_000001__01", "2007_000001__09", "junk line"], crlf=False
    )
    result = build_pascal5i(pascal.root, list_file=split, list_format="hsnet", min_area=0)
    assert sample_ids(result) == ["2007_000001_1"]
    assert (
        result.skip_counts[SkipReason.BAD_LIST_LINE] == 1
        and result.skip_counts[SkipReason.LISTED_ABSENT] == 1
    )


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
    assert sample_ids(result) == ["COCO_val2014_000000000042_5", "COCO_val2014_000000000073_77"]


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, coco) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    pkl = tmp_path / "fold0.pkl"
    pkl.write_bytes(pickle.dumps({0: [Evil()]}))
    with pytest.raises(BuildError, match="not an HSNet split pickle"):
        build_coco20i(coco.root, list_file=pkl)


def test_hdmnet_support_list_is_read_as_literals_only(tmp_path: Path) -> None:
    from difaug.inputs.datasets.common import BuildError, detect_list_format, read_split_file

    path = tmp_path / "sub_class_file_list_0.txt"  # HDMNet writes str(dict)
    path.write_text(
        str({6: [("../VOC/JPEGImages/a.jpg", "../VOC/SegmentationClassAug/a.png")], 7: [], 8: ["x"]})
    )
    assert detect_list_format(path) == "hdmnet"
    entries, bad = read_split_file(path)
    assert [(e.image, e.mask, e.stem, e.class_id) for e in entries] == [
        ("../VOC/JPEGImages/a.jpg", "../VOC/SegmentationClassAug/a.png", "a", 6)
    ]
    assert len(bad) == 1 and "'x' is not (image, label)" in bad[0].detail
    path.write_text("__import__('os').system('echo no')")
    with pytest.raises(BuildError, match="not HDMNet's sub_class_file_list"):
        read_split_file(path)
