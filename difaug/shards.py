"""The run directory's on-disk formats: Parquet shards, stats markers, the plan file.

A shard holds one row per auxiliary image (columns below, in this order). The two image columns use
the Hugging Face `datasets` Image layout, struct<bytes, path>, and the schema carries the
`huggingface` metadata, so `datasets.load_dataset("parquet", data_files=...)` decodes them.

Everything here is written to a temporary name beside its target and renamed into place, so a
reader (or a resumed run) sees either the whole file or none of it. A shard's stats marker
(`stats/NNNNN.json`) is written after its Parquet file: the marker is what says "this shard is done".
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from difaug.config import JobConfig
    from difaug.manifest import Sample

PLAN_FILE = "difaug.json"
SHARDS_DIR = "shards"
STATS_DIR = "stats"
ROW_GROUP_SIZE = 100
COMPRESSION = "zstd"
IMAGE_COLUMNS = ("condition_image", "aux_image")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# (name, arrow type, datasets Value dtype or None for an Image column)
_COLUMNS: tuple[tuple[str, pa.DataType, str | None], ...] = (
    ("key", pa.string(), "string"),
    ("sample_id", pa.string(), "string"),
    ("aux_index", pa.int32(), "int32"),
    ("row", pa.int32(), "int32"),
    ("class_id", pa.int32(), "int32"),
    ("class_name", pa.string(), "string"),
    ("dataset", pa.string(), "string"),
    ("split", pa.string(), "string"),
    ("fold", pa.int32(), "int32"),
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

COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _COLUMNS)

# zstd everywhere except the encoded PNG/JPEG bytes, which do not shrink: compressing them again
# only costs CPU.
_COMPRESSION_BY_COLUMN: dict[str, str] = {
    **{c: COMPRESSION for c in COLUMNS if c not in IMAGE_COLUMNS},
    **{f"{c}.path": COMPRESSION for c in IMAGE_COLUMNS},
    **{f"{c}.bytes": "none" for c in IMAGE_COLUMNS},
}


def _hf_features() -> dict[str, Any]:
    return {
        name: ({"_type": "Image"} if dtype is None else {"dtype": dtype, "_type": "Value"})
        for name, _, dtype in _COLUMNS
    }


SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, typ) for name, typ, _ in _COLUMNS],
    metadata={"huggingface": json.dumps({"info": {"features": _hf_features()}}, sort_keys=True)},
)


class ShardError(ValueError):
    """A shard row or file that does not fit the schema; the message names the column."""


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_path(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / SHARDS_DIR / f"{shard_name(index)}.parquet"


def stats_path(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / STATS_DIR / f"{shard_name(index)}.json"


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
) -> dict[str, Any]:
    """One shard row (one auxiliary image) in the column order of `SCHEMA`."""
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
    }


def _atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then rename over `path`; a crash leaves only a temp file.

    The temp name carries host, pid and a random part: on a run directory shared by several nodes or
    containers (where pids repeat), two attempts at one shard never write into the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by column name) → a table with exactly `SCHEMA`. Missing columns refuse."""
    if rows:
        # Score columns may be left out (null: scoring off); every other column must be there.
        missing = [c for c in COLUMNS if c not in rows[0] and c not in SCORE_COLUMNS]
        if missing:
            raise ShardError(f"shard rows lack column(s) {', '.join(missing)}")
    arrays = []
    for name, typ, _ in _COLUMNS:
        try:
            arrays.append(
                pa.array([r.get(name) if name in SCORE_COLUMNS else r[name] for r in rows], type=typ)
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as e:
            raise ShardError(f"column {name!r}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_shard(path: str | Path, rows: Sequence[Mapping[str, Any]] | pa.Table) -> Path:
    """Write one shard atomically. Same rows in the same order → the same bytes (no timestamps)."""
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ShardError(f"{path}: table schema differs from difaug.shards.SCHEMA")
    table = table.replace_schema_metadata(SCHEMA.metadata)

    def write(tmp: Path) -> None:
        pq.write_table(
            table,
            tmp,
            compression=_COMPRESSION_BY_COLUMN,
            row_group_size=ROW_GROUP_SIZE,
            use_dictionary=[c for c in COLUMNS if c not in IMAGE_COLUMNS],
            write_statistics=[c for c in COLUMNS if c not in IMAGE_COLUMNS],
        )

    _atomic_write(path, write)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (stats markers, the plan)."""
    path = Path(path)
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def read_shard(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=list(columns) if columns is not None else None)


def iter_shard_paths(run_dir: str | Path) -> Iterator[Path]:
    """Finished shards (those with a stats marker), in index order. Temp files are never listed."""
    run_dir = Path(run_dir)
    for marker in sorted((run_dir / STATS_DIR).glob("[0-9]*.json")):
        if not marker.stem.isdigit():
            continue
        path = run_dir / SHARDS_DIR / f"{marker.stem}.parquet"
        if path.is_file():
            yield path


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_stats(run_dir: str | Path) -> list[dict]:
    """Every stats marker of a run, in shard order."""
    out = []
    for marker in sorted((Path(run_dir) / STATS_DIR).glob("[0-9]*.json")):
        if marker.stem.isdigit():
            out.append(json.loads(marker.read_text(encoding="utf-8")))
    return out


def load_plan(run_dir: str | Path) -> dict:
    path = Path(run_dir) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no plan in {run_dir}: {PLAN_FILE} is missing (is this a difaug run dir?)")
    return json.loads(path.read_text(encoding="utf-8"))


_HOST = socket.gethostname().replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temp_files(run_dir: str | Path, *, foreign_after_s: float = 6 * 3600) -> int:
    """Delete `*.tmp-<host>-<pid>-<rand>` leftovers of dead writers; returns how many went.

    A temp file of this host whose pid is alive may belong to a writer that is finishing, so it
    stays (it is never read either way). Another host's pids cannot be checked from here: its temp
    files go only once they are older than `foreign_after_s` (no shard write takes that long)."""
    n = 0
    now = time.time()
    for sub in (SHARDS_DIR, STATS_DIR, "."):
        for tmp in (Path(run_dir) / sub).glob("*.tmp-*"):
            host, _, rest = tmp.name.rsplit(".tmp-", 1)[1].rpartition("-")[0].rpartition("-")
            pid = rest
            try:
                age = now - tmp.stat().st_mtime
            except OSError:
                continue
            if host and host != _HOST:
                if age < foreign_after_s:
                    continue
            elif pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            tmp.unlink(missing_ok=True)
            n += 1
    return n
