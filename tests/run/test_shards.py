"""Shard files: schema, atomic writes, deterministic bytes, and `datasets` decoding the images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from difaug.core.imageio import encode_png
from difaug.run import shards
from difaug.run.layout import shard_path


def _row(i: int, aux: int = 0, fold: int | None = 1) -> dict:
    rng = np.random.default_rng(i * 10 + aux)
    cond = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    aux_img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    sid = f"s{i}"
    return {
        "key": f"{sid}/{aux}",
        "sample_id": sid,
        "aux_index": aux,
        "row": i,
        "class_id": 3,
        "class_name": "bird",
        "dataset": "demo",
        "split": "train",
        "fold": fold,
        "image": f"/data/{sid}.jpg",
        "mask": f"/data/{sid}.png",
        "width": 30,
        "height": 20,
        "condition": "hed",
        "condition_style": "diffss",
        "condition_image": shards.image_struct(encode_png(cond), f"{sid}_{aux}.png"),
        "aux_image": shards.image_struct(encode_png(aux_img), f"{sid}_{aux}.png"),
        "prompt": "a real shot photo of bird",
        "negative_prompt": "lowres",
        "seed": 2**62 + i,
        "base_model": "base",
        "controlnet_model": "cn",
        "scheduler": "unipc",
        "steps": 2,
        "guidance_scale": 9.0,
        "controlnet_scale": 1.0,
        "dtype": "float32",
        "device": "cpu",
    }


def _rows(n: int) -> list[dict]:
    return [_row(i, a, fold=None if i == 2 else 1) for i in range(1, n + 1) for a in range(2)]


def test_schema_columns_in_documented_order() -> None:
    assert shards.SCHEMA.names[:4] == ["key", "sample_id", "aux_index", "row"]
    assert shards.SCHEMA.names[-4:] == ["dtype", "device", "drift_iou", "drift_segments"]
    assert len(shards.SCHEMA.names) == 30
    assert shards.SCHEMA.field("aux_image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert shards.SCHEMA.field("seed").type == pa.int64()
    meta = json.loads(shards.SCHEMA.metadata[b"huggingface"])
    assert meta["info"]["features"]["aux_image"] == {"_type": "Image"}
    # Columns that hold manifest values are as wide as anything validation accepts.
    for name in ("row", "class_id", "fold"):
        assert shards.SCHEMA.field(name).type == pa.int64()
        assert meta["info"]["features"][name] == {"dtype": "int64", "_type": "Value"}


def test_huge_manifest_values_are_stored(tmp_path: Path) -> None:
    rows = _rows(1)
    for r in rows:
        r["fold"], r["class_id"] = 3_000_000_000, 2**63 - 1
    table = shards.read_shard(shards.write_shard(tmp_path / "big.parquet", rows))
    assert set(table.column("fold").to_pylist()) == {3_000_000_000}
    assert set(table.column("class_id").to_pylist()) == {2**63 - 1}


def test_page_checksums_catch_flipped_bytes(tmp_path: Path) -> None:
    path = shards.write_shard(tmp_path / "s.parquet", _rows(2))
    data = bytearray(path.read_bytes())
    cell = data.find(_rows(2)[1]["aux_image"]["bytes"][40:80])  # inside an uncompressed PNG page
    assert cell > 0
    data[cell + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match=r"(?i)crc|checksum"):
        shards.read_shard(path)
    with pytest.raises(OSError, match=r"(?i)crc|checksum"), shards.open_shard(path) as pf:
        pf.read_row_group(0, columns=["aux_image"])


def test_write_read_roundtrip_atomic(tmp_path: Path) -> None:
    path = shard_path(tmp_path, 3)
    rows = _rows(3)
    shards.write_shard(path, rows)
    assert path.name == "00003.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["00003.parquet"]  # no temp file left
    table = shards.read_shard(path)
    assert table.schema.equals(shards.SCHEMA, check_metadata=True)
    assert table.column("key").to_pylist() == [r["key"] for r in rows]
    assert table.column("fold").to_pylist() == [1, 1, None, None, 1, 1]
    got = table.column("aux_image").to_pylist()[1]
    assert got["bytes"] == rows[1]["aux_image"]["bytes"]
    md = pq.ParquetFile(path).metadata
    leaves = {
        md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)
    }
    assert leaves["key"].compression == "ZSTD"
    assert leaves["aux_image.bytes"].compression == "UNCOMPRESSED"  # PNG bytes: zstd gains nothing
    assert shards.read_shard(path, columns=["key", "seed"]).column_names == ["key", "seed"]


def test_row_groups_of_100(tmp_path: Path) -> None:
    rows = [_row(1 + i // 2, i % 2) for i in range(250)]
    for i, r in enumerate(rows):
        r["key"] = f"k{i}"
    path = shards.write_shard(tmp_path / "a.parquet", rows)
    md = pq.ParquetFile(path).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [100, 100, 50]


def test_same_rows_same_bytes(tmp_path: Path) -> None:
    a = shards.write_shard(tmp_path / "a.parquet", _rows(4))
    b = shards.write_shard(tmp_path / "b" / "a.parquet", _rows(4))
    assert a.read_bytes() == b.read_bytes()


def test_bad_rows_refused_and_nothing_written(tmp_path: Path) -> None:
    rows = _rows(1)
    del rows[0]["seed"]
    with pytest.raises(shards.ShardError, match="seed"):
        shards.write_shard(tmp_path / "x.parquet", rows)
    rows = _rows(1)
    rows[0]["steps"] = "many"
    with pytest.raises(shards.ShardError, match="steps"):
        shards.write_shard(tmp_path / "x.parquet", rows)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shards.write_shard(tmp_path / "s.parquet", _rows(1))
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        shards.write_shard(path, _rows(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_datasets_decodes_image_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = _rows(2)
    path = shards.write_shard(shard_path(tmp_path, 0), rows)
    ds = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert ds.features["aux_image"].__class__.__name__ == "Image"
    first = ds[0]
    assert isinstance(first["aux_image"], Image.Image)
    expected = Image.open(io.BytesIO(rows[0]["aux_image"]["bytes"]))
    assert np.array_equal(np.asarray(first["aux_image"]), np.asarray(expected))
    assert first["condition_image"].size == (24, 16)
    assert first["seed"] == rows[0]["seed"]
    assert ds[2]["fold"] is None and ds[0]["fold"] == 1


def test_regeneration_columns_only_in_a_regenerating_jobs_shards(tmp_path: Path) -> None:
    """Rows with `attempt`/`attempts`/`drift_pass` give `REGEN_SCHEMA` (nullable `drift_pass`, HF
    features included); rows without them the schema of before, so such a job's bytes are unchanged."""
    plain = shards.rows_to_table(_rows(2))
    assert plain.schema.equals(shards.SCHEMA, check_metadata=True)
    rows = [r | {"attempt": 1, "attempts": 2, "drift_pass": i != 0} for i, r in enumerate(_rows(2))]
    rows[1]["drift_pass"] = None
    path = shards.write_shard(tmp_path / "r.parquet", rows)
    table = shards.read_shard(path)
    assert table.schema.equals(shards.REGEN_SCHEMA, check_metadata=True)
    assert table.column_names[-3:] == ["attempt", "attempts", "drift_pass"]
    assert table.column("drift_pass").to_pylist() == [False, None, True, True]
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["drift_pass"] == {"dtype": "bool", "_type": "Value"}
    # A rewrite (difaug score) keeps them; a table of neither schema is refused.
    assert shards.write_shard(tmp_path / "again.parquet", table).read_bytes() == path.read_bytes()
    with pytest.raises(shards.ShardError, match="schema differs"):
        shards.write_shard(tmp_path / "x.parquet", table.drop_columns(["attempts"]))
    with pytest.raises(shards.ShardError, match="lack column"):
        shards.rows_to_table([{k: v for k, v in r.items() if k != "attempts"} for r in rows])
