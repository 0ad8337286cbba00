"""The shard file: its Parquet schema, the row builder, the writer and the readers.

A shard holds one row per auxiliary image (columns below, in this order). The two image columns use
the Hugging Face `datasets` Image layout, struct<bytes, path>, and the schema carries the
`huggingface` metadata, so `datasets.load_dataset("parquet", data_files=...)` decodes them.

Where shards live and how a finished one is told from a broken one are the run directory's
(`difaug.run.layout`, `difaug.run.verify`). Shards are written with Parquet page checksums and read
with their verification on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from difaug.core.errors import DifaugError
from difaug.run.layout import atomic_write

if TYPE_CHECKING:
    from difaug.core.config import JobConfig
    from difaug.inputs.manifest import Sample

ROW_GROUP_SIZE = 100
COMPRESSION = "zstd"
IMAGE_COLUMNS = ("condition_image", "aux_image")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# (name, arrow type, datasets Value dtype or None for an Image column)
_COLUMNS: tuple[tuple[str, pa.DataType, str | None], ...] = (
    ("key", pa.string(), "string"),
    ("sample_id", pa.string(), "string"),
    ("aux_index", pa.int32(), "int32"),
    ("row", pa.int64(), "int64"),  # a manifest value: any int64 validation accepts
    ("class_id", pa.int64(), "int64"),  # a manifest value: any int64 validation accepts
    ("class_name", pa.string(), "string"),
    ("dataset", pa.string(), "string"),
    ("split", pa.string(), "string"),
    ("fold", pa.int64(), "int64"),  # a manifest value: any int64 validation accepts
    ("image", pa.string(), "string"),
    ("mask", pa.string(), "string"),
    ("width", pa.int32(), "int32"),
    ("height", pa.int32(), "int32"),
    ("condition", pa.string(), "string"),
    ("condition_style", pa.string(), "string"),
    ("condition_image", IMAGE_TYPE, None),
    ("aux_image", IMAGE_TYPE, None),
    ("prompt", pa.string(), "string"),
    ("negative_prompt", pa.string(), "string"),
    ("seed", pa.int64(), "int64"),
    ("base_model", pa.string(), "string"),
    ("controlnet_model", pa.string(), "string"),
    ("scheduler", pa.string(), "string"),
    ("steps", pa.int32(), "int32"),
    ("guidance_scale", pa.float64(), "float64"),
    ("controlnet_scale", pa.float64(), "float64"),
    ("dtype", pa.string(), "string"),
    ("device", pa.string(), "string"),
    # Quality scores (DiffSeg drift, see DESIGN.md "Shard rows"): null when scoring is off.
    ("drift_iou", pa.float64(), "float64"),
    ("drift_segments", pa.int32(), "int32"),
)

# Regeneration (`min_drift_iou`, `max_attempts`): only the shards of a job that regenerates carry
# them, so a job without it writes the same bytes as before they existed, and a reader treats
# their absence as "attempt 0 of 1, not judged".
_REGEN_COLUMNS: tuple[tuple[str, pa.DataType, str | None], ...] = (
    ("attempt", pa.int32(), "int32"),  # the kept attempt (0 = the first seed)
    ("attempts", pa.int32(), "int32"),  # how many were generated for this row
    ("drift_pass", pa.bool_(), "bool"),  # drift_iou >= min_drift_iou (null: no score to judge)
)
REGEN_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _REGEN_COLUMNS)

COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _COLUMNS)
ALL_COLUMNS: tuple[str, ...] = COLUMNS + REGEN_COLUMNS

# zstd everywhere except the encoded PNG/JPEG bytes, which do not shrink: compressing them again
# only costs CPU.
_COMPRESSION_BY_COLUMN: dict[str, str] = {
    **{c: COMPRESSION for c in ALL_COLUMNS if c not in IMAGE_COLUMNS},
    **{f"{c}.path": COMPRESSION for c in IMAGE_COLUMNS},
    **{f"{c}.bytes": "none" for c in IMAGE_COLUMNS},
}


def _schema(columns: Sequence[tuple[str, pa.DataType, str | None]]) -> pa.Schema:
    features = {
        name: ({"_type": "Image"} if dtype is None else {"dtype": dtype, "_type": "Value"})
        for name, _, dtype in columns
    }
    return pa.schema(
        [pa.field(name, typ) for name, typ, _ in columns],
        metadata={"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True)},
    )


SCHEMA: pa.Schema = _schema(_COLUMNS)
REGEN_SCHEMA: pa.Schema = _schema(_COLUMNS + _REGEN_COLUMNS)  # a regenerating job's shards


class ShardError(DifaugError, ValueError):
    """A shard row or file that does not fit the schema; the message names the column."""


def image_struct(data: bytes, path: str) -> dict[str, Any]:
    """One value of an Image column."""
    return {"bytes": data, "path": path}


# What the generator reports about itself (base_model … device).
PROVENANCE_COLUMNS = (
    "base_model",
    "controlnet_model",
    "scheduler",
    "steps",
    "guidance_scale",
    "controlnet_scale",
    "dtype",
    "device",
)
SCORE_COLUMNS = ("drift_iou", "drift_segments")


def make_row(
    sample: Sample,
    cfg: JobConfig,
    *,
    aux_index: int,
    seed: int,
    prompt: str,
    negative_prompt: str,
    size: tuple[int, int],
    condition_png: bytes,
    aux_bytes: bytes,
    provenance: Mapping[str, Any],
    scores: Mapping[str, Any] | None = None,
    attempts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One shard row (one auxiliary image) in the column order of `SCHEMA`; with `attempts`
    (`REGEN_COLUMNS`: a regenerating job) in that of `REGEN_SCHEMA`."""
    name = f"{sample.sample_id}_{aux_index}"
    ext = "jpg" if cfg.image_format == "jpeg" else "png"
    width, height = size
    return {
        "key": f"{sample.sample_id}/{aux_index}",
        "sample_id": sample.sample_id,
        "aux_index": aux_index,
        "row": sample.row,
        "class_id": sample.class_id,
        "class_name": sample.class_name,
        "dataset": sample.dataset,
        "split": sample.split,
        "fold": sample.fold,
        "image": sample.image,
        "mask": sample.mask,
        "width": width,
        "height": height,
        "condition": cfg.condition,
        "condition_style": cfg.condition_style,
        "condition_image": image_struct(condition_png, f"{name}.png"),
        "aux_image": image_struct(aux_bytes, f"{name}.{ext}"),
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        **{k: provenance[k] for k in PROVENANCE_COLUMNS},
        **{k: (scores or {}).get(k) for k in SCORE_COLUMNS},
        **({k: attempts.get(k) for k in REGEN_COLUMNS} if attempts is not None else {}),
    }


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by column name) → a table with exactly `SCHEMA`, or `REGEN_SCHEMA` when
    the rows carry the regeneration columns. Missing columns refuse."""
    regen = bool(rows) and any(c in rows[0] for c in REGEN_COLUMNS)
    if rows:
        # Score columns may be left out (null: scoring off); every other column must be there.
        wanted = ALL_COLUMNS if regen else COLUMNS
        missing = [c for c in wanted if c not in rows[0] and c not in SCORE_COLUMNS]
        if missing:
            raise ShardError(f"shard rows lack column(s) {', '.join(missing)}")
    arrays = []
    for name, typ, _ in _COLUMNS + (_REGEN_COLUMNS if regen else ()):
        try:
            if name in IMAGE_COLUMNS:
                arrays.append(_image_array([r[name] for r in rows]))
            else:
                arrays.append(
                    pa.array([r.get(name) if name in SCORE_COLUMNS else r[name] for r in rows], type=typ)
                )
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as e:
            raise ShardError(f"column {name!r}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=REGEN_SCHEMA if regen else SCHEMA)


def _image_array(values: Sequence[Mapping[str, Any]]) -> pa.StructArray:
    """An Image column from `image_struct` values. The encoded bytes (the bulk of a shard, ~100 MB)
    go into one joined buffer with its offsets: 5-15x faster than `pa.array` over dicts, which
    copied them one Python object at a time while the device waited for the shard to be written."""
    blobs = [v["bytes"] for v in values]
    if not blobs or not all(isinstance(b, bytes | bytearray) for b in blobs):
        return pa.array(list(values), type=IMAGE_TYPE)  # empty or nulls: arrow's own path
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    if ends[-1] >= 2**31:  # beyond binary()'s 32-bit offsets: let arrow say so
        return pa.array(list(values), type=IMAGE_TYPE)
    offsets = np.zeros(len(blobs) + 1, np.int32)
    offsets[1:] = ends
    data = pa.Array.from_buffers(
        pa.binary(), len(blobs), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(blobs))]
    )
    paths = pa.array([v["path"] for v in values], type=pa.string())
    return pa.StructArray.from_arrays([data, paths], fields=list(IMAGE_TYPE))


def write_shard(path: str | Path, rows: Sequence[Mapping[str, Any]] | pa.Table) -> Path:
    """Write one shard atomically. Same rows in the same order → the same bytes (no timestamps)."""
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
    schema = next((s for s in (SCHEMA, REGEN_SCHEMA) if table.schema.equals(s, check_metadata=False)), None)
    if schema is None:
        raise ShardError(f"{path}: table schema differs from difaug.run.shards.SCHEMA (and REGEN_SCHEMA)")
    table = table.replace_schema_metadata(schema.metadata)
    names = table.schema.names

    def write(tmp: Path) -> None:
        pq.write_table(
            table,
            tmp,
            compression={k: v for k, v in _COMPRESSION_BY_COLUMN.items() if k.split(".")[0] in names},
            row_group_size=ROW_GROUP_SIZE,
            use_dictionary=[c for c in names if c not in IMAGE_COLUMNS],
            write_statistics=[c for c in names if c not in IMAGE_COLUMNS],
            write_page_checksum=True,  # a flipped byte fails the read instead of passing silently
        )

    atomic_write(path, write)
    return path


def read_shard(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a shard (or some columns), verifying the Parquet page checksums."""
    cols = list(columns) if columns is not None else None
    return pq.read_table(path, columns=cols, page_checksum_verification=True)


def open_shard(path: str | Path) -> pq.ParquetFile:
    """A shard opened for row-group reads, with page checksum verification on: a flipped byte
    raises OSError instead of returning a broken image (for export and AuxIndex)."""
    return pq.ParquetFile(path, page_checksum_verification=True)
