"""`AuxIndex`: lazy Parquet access, support-key lookup, bounded open files, the choice of k shots."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _runs import COCO_SPECS, SampleSpec, SyntheticRun, make_run

from difaug.adapters import AuxIndex, AuxKeyError
from difaug.core.imageio import load_image


@pytest.fixture(scope="module")
def pascal_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    return make_run(tmp_path_factory.mktemp("pascal"), num_aux=3, fail=["2008_000123_7"])


def test_index_reads_only_key_columns_until_asked(
    pascal_run: SyntheticRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[list[str] | None] = []
    real_read_table, real_read_group = pq.read_table, pq.ParquetFile.read_row_group

    def spy_read_table(*args, columns=None, **kwargs):
        requested.append(columns)
        return real_read_table(*args, columns=columns, **kwargs)

    def spy_read_group(self, i, columns=None, **kwargs):
        requested.append(columns)
        return real_read_group(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy_read_table)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy_read_group)
    index = AuxIndex(pascal_run.run_dir)
    assert requested and all(cols is not None for cols in requested)  # never "all columns"
    assert not any({"aux_image", "condition_image"} & set(cols) for cols in requested)
    assert index.row_groups_read == 0 and len(index) == 4 and index.num_aux == 3

    s = pascal_run.sample("2007_000039_20")
    got = index.aux_images(s.sample_id)
    assert requested[-1] == ["aux_image"]  # one column of one row group
    for want, have in zip(pascal_run.aux[s.sample_id], got, strict=True):
        np.testing.assert_array_equal(have, want)
    assert index.row_groups_read == 1
    index.aux_images(s.sample_id, k=2)  # same row group: served from the cache
    assert index.row_groups_read == 1
    np.testing.assert_array_equal(index.condition_image(s.sample_id), pascal_run.conditions[s.sample_id])


def test_index_keeps_few_files_open(pascal_run: SyntheticRun, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thousands of shards must not mean thousands of open descriptors in every DataLoader worker.
    import difaug.adapters.index as index_mod

    monkeypatch.setattr(index_mod, "MAX_OPEN_FILES", 1)
    index = AuxIndex(pascal_run.run_dir, cache_row_groups=1)
    ids = [s.sample_id for s in pascal_run.samples if s.sample_id in pascal_run.aux]
    for sid in ids + ids:
        for want, have in zip(pascal_run.aux[sid], index.aux_images(sid), strict=True):
            np.testing.assert_array_equal(have, want)
    assert len(index._files) == 1


def test_index_finds_supports_by_any_reasonable_name(pascal_run: SyntheticRun) -> None:
    index = AuxIndex(pascal_run.run_dir)
    s = pascal_run.sample("2007_000032_15")
    path = Path(s.image)
    for key in (s.image, f"/elsewhere/{path.parent.name}/{path.name}", path.name, path.stem):
        assert index.sample_id(key, 15) == "2007_000032_15"
    assert index.sample_id(path.stem, 1) == "2007_000032_1"  # same image, other class
    assert index.count(path.stem, 15) == 3 and index.aux_indices(s.sample_id) == [0, 1, 2]
    assert (path.stem, 15) in index and (path.stem, 2) not in index
    with pytest.raises(AuxKeyError, match="no aux images for '2008_000123' with class_id 7"):
        index.sample_id("2008_000123", 7)  # failed in the run
    with pytest.raises(AuxKeyError, match="pass class_id"):
        index.sample_id("2007_000032")


def test_index_refuses_ambiguous_names(tmp_path: Path) -> None:
    specs = [
        SampleSpec("same", 1, "aeroplane", parent="VOC2007"),
        SampleSpec("same", 1, "aeroplane", parent="VOC2012", sample_id="same_1_b"),
    ]
    run = make_run(tmp_path, specs, num_aux=1)
    index = AuxIndex(run.run_dir)
    with pytest.raises(AuxKeyError, match="ambiguous"):
        index.sample_id("same", 1)
    assert index.sample_id("VOC2012/same.jpg", 1) == "same_1_b"


def test_index_coco_names_and_row_groups(tmp_path: Path) -> None:
    # 60 samples x 2 aux in one shard = 120 rows = row groups of 100 + 20.
    specs = [SampleSpec(f"img{i:03d}", 1 + i % 20, "thing", size=(16, 12)) for i in range(60)]
    run = make_run(tmp_path / "p", specs, num_aux=2, shard_size=60)
    assert pq.ParquetFile(run.run_dir / "shards" / "00000.parquet").metadata.num_row_groups == 2
    index = AuxIndex(run.run_dir, cache_row_groups=1)
    for sid in ("img000_1", "img049_10", "img050_11", "img059_20"):  # both sides of the boundary
        for want, have in zip(run.aux[sid], index.aux_images(sid), strict=True):
            np.testing.assert_array_equal(have, want)

    coco = make_run(tmp_path / "c", COCO_SPECS, num_aux=1)
    cindex = AuxIndex(coco.run_dir)
    assert (
        cindex.sample_id("train2014/COCO_train2014_000000000009.jpg", 51) == "COCO_train2014_000000000009_51"
    )


def test_index_survives_pickling(pascal_run: SyntheticRun) -> None:
    index = AuxIndex(pascal_run.run_dir)
    index.aux_images("2007_000032_1")
    clone = pickle.loads(pickle.dumps(index))
    assert clone.row_groups_read == 1  # a counter, not a cache: the clone reads for itself
    np.testing.assert_array_equal(clone.aux_images("2007_000032_1")[2], pascal_run.aux["2007_000032_1"][2])


def test_aux_images_decodes_what_aux_bytes_chooses(pascal_run: SyntheticRun) -> None:
    import inspect

    index = AuxIndex(pascal_run.run_dir)
    picked = index.aux_bytes("2007_000032", 1, 2, choose="random", seed=3)
    decoded = index.aux_images("2007_000032", 1, 2, choose="random", seed=3)
    assert len(decoded) == len(picked) == 2
    for raw, image in zip(picked, decoded, strict=True):
        np.testing.assert_array_equal(image, load_image(raw))
    # help() and editors show aux_bytes' parameters, plus the form to decode to.
    images, raw_bytes = inspect.signature(index.aux_images), inspect.signature(index.aux_bytes)
    assert set(images.parameters) == {*raw_bytes.parameters, "form"}
    with pytest.raises(ValueError, match="choose"):
        index.aux_images("2007_000032_1", k=1, choose="best")
    with pytest.raises(ValueError, match="form='bgr'"):
        index.aux_images("2007_000032_1", k=1, form="bgr")


def test_aux_images_in_each_trainers_form(pascal_run: SyntheticRun, tmp_path: Path) -> None:
    """`pil` is what HSNet's `Image.open(path)` gives for the same file, `cv2` what BAM/PFENet/HDMNet's
    `np.float32(cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))` gives."""
    import cv2
    from PIL import Image

    index = AuxIndex(pascal_run.run_dir)
    raw = index.aux_bytes("2007_000032", 1, 1)[0]
    path = tmp_path / "aux.img"
    path.write_bytes(raw)
    pil = index.aux_images("2007_000032", 1, 1, form="pil")[0]
    assert isinstance(pil, Image.Image) and pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), np.asarray(Image.open(path)))
    arr = index.aux_images("2007_000032", 1, 1, form="cv2")[0]
    want = np.float32(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, want)
