from __future__ import annotations

import csv
from pathlib import Path

import pytest

from difaug.core.classes import ade_index_by_name, ade_palette, class_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_tables_have_every_class_and_the_difFSS_names() -> None:
    assert len(class_table("pascal")) == 20 and len(class_table("coco")) == 80
    assert len(class_table("fss1000")) == 1000
    pascal = class_table("pascal")
    assert pascal[14].class_name == "motorbike" and pascal[20].class_name == "television"
    assert tuple(ade_palette()[0]) == (120, 120, 120) and ade_palette().shape == (150, 3)


def test_packaged_tables_equal_the_shared_reference_when_present() -> None:
    # The package carries a copy; CI runs beside shared/, so drift is caught there.
    ref = SHARED / "class_to_ade.tsv"
    if not ref.is_file():
        pytest.skip("shared/ reference tables are not beside this checkout")
    rows = list(csv.DictReader(ref.open(encoding="utf-8"), delimiter="\t"))
    for r in rows:
        info = class_table(r["dataset"])[int(r["class_id"])]
        assert (info.class_name, info.ade_index) == (r["class_name"], int(r["ade_index"]))


def test_voc_spellings_map_like_the_table_names() -> None:
    by_name = ade_index_by_name()
    pascal = {info.class_name: info.ade_index for info in class_table("pascal").values()}
    assert by_name["aeroplane"] == pascal["airplane"]
    assert by_name["tvmonitor"] == pascal["television"]
    assert by_name["pottedplant"] == pascal["potted plant"]
    assert by_name["diningtable"] == pascal["dining table"]
