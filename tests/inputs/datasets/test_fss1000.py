"""`build_fss1000`: binarised mask copies, class ids (HSNet's or the table's) and skip reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _trees import (
    H,
    W,
    make_fss_tree,
    sample_ids,
    save_image,
    write_list,
)
from PIL import Image

from difaug.core import imageio
from difaug.inputs.datasets import (
    BuildError,
    SkipReason,
    build_fss1000,
    stable_class_ids,
)
from difaug.inputs.datasets.fss1000 import MISSING_CLASS_DIR
from difaug.inputs.manifest import read_manifest, validate_manifest


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
    assert dict(result.skip_counts) == {
        SkipReason.MISSING_IMAGE: 1,
        SkipReason.MISSING_MASK: 1,
        SkipReason.EMPTY: 1,
    }
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
    assert sample_ids(listed) == ["my_widget_1"]
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


def test_fss1000_hsnet_ids_need_a_split(tmp_path: Path) -> None:
    tree = make_fss_tree(tmp_path)
    names = write_list(tmp_path / "classes.txt", ["ac_wall"], crlf=False)
    with pytest.raises(BuildError, match="trn, val or test"):
        build_fss1000(tree.root, mask_out=tmp_path / "m", list_file=names, class_ids="hsnet")
    result = build_fss1000(
        tree.root, mask_out=tmp_path / "m", list_file=names, class_ids="hsnet", split="val"
    )
    assert {r["class_id"] for r in result.rows} == {521}  # index 0 of val + 520, + 1
