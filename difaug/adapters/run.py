"""A read-only view of a run directory, shared by export, the index and inspect.

It reads the plan, the stats markers and the shards' *key* columns only (never the image bytes),
so opening a run of 100k auxiliary images costs a few MB. The plan (`difaug.plan`) and the markers
(`difaug.worker`) are the runner's formats; a missing marker field degrades the report, it does not
crash it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from difaug import shards
from difaug.plan import SUMMARY_FILE, shard_ranges

# Columns cheap enough to read for every row up front (no image bytes).
KEY_COLUMNS = (
    "sample_id",
    "aux_index",
    "row",
    "class_id",
    "class_name",
    "dataset",
    "split",
    "image",
    "mask",
    "width",
    "height",
)


class RunError(ValueError):
    """The folder is not a usable run directory; the message says what is missing."""


@dataclass(frozen=True)
class Failure:
    """One failed manifest row (or one failed aux image of it), from a stats marker."""

    row: int | None
    sample_id: str
    stage: str
    reason: str
    shard: str = ""


@dataclass
class RunView:
    run_dir: Path
    plan: dict[str, Any]
    stats: list[dict[str, Any]]
    shard_paths: list[Path]
    # KEY_COLUMNS of every finished shard + where each row's bytes are: `_shard` (position in
    # shard_paths), `_group` (row group), `_in_group` (row inside that row group)
    keys: pa.Table
    failures: list[Failure] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return plan_config(self.plan)

    @property
    def num_aux(self) -> int:
        """X, the number of aux images each sample should have."""
        n = self.config.get("num_aux")
        if isinstance(n, int) and n > 0:
            return n
        aux = self.keys.column("aux_index").to_pylist()
        return max(aux) + 1 if aux else 0

    def failures_by_sample(self) -> dict[str, list[Failure]]:
        out: dict[str, list[Failure]] = {}
        for f in self.failures:
            out.setdefault(f.sample_id, []).append(f)
        return out

    def failure_reasons(self) -> Counter[str]:
        return Counter(f.reason for f in self.failures)

    def unfinished_shards(self) -> list[PlannedShard]:
        """Shards the plan lists that have no completion marker (not run yet, or still running)."""
        done = {p.stem for p in self.shard_paths}
        return [s for s in plan_shards(self.plan) if s.name not in done]


def open_run(run_dir: str | Path) -> RunView:
    """Read a run directory's plan, markers and key columns. Raises `RunError` if it is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    try:
        plan = shards.load_plan(run_dir)
    except FileNotFoundError as e:
        raise RunError(str(e)) from e
    except ValueError as e:  # json.JSONDecodeError
        raise RunError(f"{run_dir / shards.PLAN_FILE}: not valid JSON ({e})") from e
    stats = shards.load_stats(run_dir)
    paths = list(shards.iter_shard_paths(run_dir))
    done = {p.stem for p in paths}
    unfinished = [s for s in plan_shards(plan) if s.name not in done]
    return RunView(
        run_dir=run_dir,
        plan=plan,
        stats=stats,
        shard_paths=paths,
        keys=read_keys(paths),
        failures=list(marker_failures(stats)) + list(summary_failures(run_dir, unfinished)),
    )


def read_keys(paths: Iterable[Path]) -> pa.Table:
    """KEY_COLUMNS of all shards, plus `_shard` (position in `paths`), `_group` and `_in_group`:
    where each row's image bytes can be read back one row group at a time."""
    tables = []
    for i, path in enumerate(paths):
        try:
            t = pq.read_table(path, columns=list(KEY_COLUMNS))
            meta = pq.read_metadata(path)  # the footer: row-group sizes
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        except (OSError, pa.ArrowInvalid) as e:
            raise RunError(f"{path}: cannot read shard ({e}); rerun `difaug generate` to redo it") from e
        first_rows = np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)
        t = t.append_column("_shard", pa.array(np.full(t.num_rows, i, np.int32)))
        t = t.append_column("_group", pa.array(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)))
        t = t.append_column("_in_group", pa.array(np.arange(t.num_rows) - first_rows))
        tables.append(t)
    if not tables:
        empty = shards.SCHEMA.empty_table().select(list(KEY_COLUMNS))
        for name, kind in (("_shard", pa.int32()), ("_group", pa.int32()), ("_in_group", pa.int64())):
            empty = empty.append_column(name, pa.array([], kind))
        return empty
    return pa.concat_tables(tables)


# --- plan fields (written by the runner) -------------------------------------------------------


def plan_config(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved JobConfig dict inside the plan."""
    return dict(plan.get("config") or {})


@dataclass(frozen=True)
class PlannedShard:
    name: str  # "00003"
    start: int  # first manifest row, 1-based (0 when the plan does not say)
    stop: int  # one past the last

    @property
    def num_rows(self) -> int:
        return max(0, self.stop - self.start)


def plan_shards(plan: Mapping[str, Any]) -> list[PlannedShard]:
    """The plan's shards by file name, with their manifest row ranges (1-based, `[start, stop)`)."""
    return [PlannedShard(shards.shard_name(r.index), r.start, r.stop) for r in shard_ranges(dict(plan))]


def summary_failures(run_dir: Path, unfinished: Sequence[PlannedShard]) -> Iterable[Failure]:
    """Failures of shards that failed as a whole (no marker; the runner lists them in summary.json).

    Only rows of shards that are still unfinished count: a later run may have redone the others."""
    path = run_dir / SUMMARY_FILE
    if not unfinished or not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    records = data.get("all_failures") if isinstance(data, Mapping) else None
    for f in records if isinstance(records, list) else ():
        row = f.get("row") if isinstance(f, Mapping) else None
        shard = next((s for s in unfinished if isinstance(row, int) and s.start <= row < s.stop), None)
        if shard is not None:
            yield Failure(
                row,
                str(f.get("sample_id") or ""),
                str(f.get("stage") or ""),
                str(f.get("reason") or "unknown"),
                shard.name,
            )


# --- stats marker fields (written by the runner) -----------------------------------------------


def marker_number(marker: Mapping[str, Any], name: str) -> float | None:
    """A numeric marker field: `images`, or a stage's seconds (`total`, `generate`, …)."""
    value = marker.get(name, (marker.get("seconds") or {}).get(name))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def marker_shard(marker: Mapping[str, Any], fallback: int) -> str:
    value = marker.get("shard")
    return shards.shard_name(value if isinstance(value, int) else fallback)


def marker_failures(stats: Iterable[Mapping[str, Any]]) -> Iterable[Failure]:
    for i, marker in enumerate(stats):
        shard = marker_shard(marker, i)
        for f in marker.get("failures") or ():
            if not isinstance(f, Mapping):
                yield Failure(None, "", "", str(f), shard)
                continue
            row = f.get("row")
            yield Failure(
                row=row if isinstance(row, int) else None,
                sample_id=str(f.get("sample_id") or ""),
                stage=str(f.get("stage") or ""),
                reason=str(f.get("reason") or "unknown"),
                shard=shard,
            )
