"""A read-only view of a run directory, shared by export, the index and inspect.

It reads the plan, the stats markers and the shards' *key* columns only (never the image bytes),
so opening a run of 100k auxiliary images costs a few MB. Only *verified* shards are listed
(`difaug.run.rundir.verify_run`: marker of this plan, file of the recorded size and sha256); the others
are in `invalid` with their reasons and `fix` says which command redoes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from difaug.run import rundir, shards
from difaug.run.rundir import Failure, RunCheck, RunDirError, ShardCheck, ShardRange

__all__ = ["Failure", "PlannedShard", "RunError", "RunView", "open_run", "plan_shards", "read_keys"]

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


class RunError(RunDirError):
    """The folder is not a usable run directory; the message says what is missing."""


PlannedShard = ShardRange  # one shard-range type for the whole package


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
    check: RunCheck | None = None  # every planned shard's verdict

    @property
    def invalid(self) -> list[ShardCheck]:
        """Shards with a marker that does not verify (they are redone by `difaug generate`)."""
        return self.check.invalid if self.check else []

    @property
    def fix(self) -> str:
        """The command that redoes the invalid and unfinished shards."""
        return rundir.fix_command(self.check.plan) if self.check else "rerun `difaug generate`"

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

    def failure_reasons(self) -> Counter[str]:
        return Counter(f.reason for f in self.failures)

    def unfinished_shards(self) -> list[ShardRange]:
        """Planned shards that are not verified done (not run yet, still running, or invalid)."""
        if self.check is not None:
            return self.check.unfinished
        done = {p.stem for p in self.shard_paths}
        return [s for s in plan_shards(self.plan) if s.name not in done]


def open_run(run_dir: str | Path) -> RunView:
    """Read a run directory's plan, verified markers and key columns. Raises `RunError` if it is
    not a run (or its plan is broken); shards that do not verify are listed in `invalid`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    try:
        check = rundir.verify_run(run_dir)
    except FileNotFoundError as e:
        raise RunError(str(e)) from e
    except RunDirError as e:
        raise RunError(str(e)) from e
    done = check.done
    stats = [c.stats.to_dict() for c in done if c.stats is not None]
    paths = [rundir.shard_path(run_dir, c.shard.index) for c in done]
    return RunView(
        run_dir=run_dir,
        plan=check.plan.to_dict(),
        stats=stats,
        shard_paths=paths,
        keys=read_keys(paths, fix=rundir.fix_command(check.plan)),
        failures=rundir.failures_of(done) + list(summary_failures(run_dir, check.unfinished)),
        check=check,
    )


def read_keys(paths: Iterable[Path], fix: str = "rerun `difaug generate` to redo it") -> pa.Table:
    """KEY_COLUMNS of all shards, plus `_shard` (position in `paths`), `_group` and `_in_group`:
    where each row's image bytes can be read back one row group at a time."""
    tables = []
    for i, path in enumerate(paths):
        try:
            t = shards.read_shard(path, KEY_COLUMNS)
            meta = pq.read_metadata(path)  # the footer: row-group sizes
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        except (OSError, pa.ArrowInvalid) as e:
            raise RunError(f"{path}: cannot read shard ({e}); {fix}") from e
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


def plan_shards(plan: Mapping[str, Any]) -> list[ShardRange]:
    """The plan's shards with their manifest row ranges (1-based, `[start, stop)`)."""
    return list(rundir.Plan.from_dict(plan).shards)


def summary_failures(run_dir: Path, unfinished: Sequence[ShardRange]) -> Iterable[Failure]:
    """Failures of shards that failed as a whole (no marker; the runner lists them in summary.json).

    Only rows of shards that are still unfinished count: a later run may have redone the others."""
    summary = rundir.read_summary(run_dir) if unfinished else None
    for f in summary.all_failures if summary else ():
        shard = next((s for s in unfinished if f.row in s), None)
        if shard is not None:
            yield Failure(f.row, f.sample_id, f.stage, f.reason, shard.name)


# --- stats marker fields (written by the runner) -----------------------------------------------


def marker_number(marker: Mapping[str, Any], name: str) -> float | None:
    """A numeric marker field (`images`, `wall_seconds`, …) or a stage's seconds (`generate`, …)."""
    value = marker.get(name, (marker.get("seconds") or {}).get(name))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def marker_shard(marker: Mapping[str, Any], fallback: int) -> str:
    value = marker.get("shard")
    return shards.shard_name(value if isinstance(value, int) else fallback)


def marker_failures(stats: Iterable[Mapping[str, Any]]) -> Iterable[Failure]:
    for i, marker in enumerate(stats):
        shard = marker_shard(marker, i)
        for f in marker.get("failures") or ():
            yield Failure.from_dict(f, shard)
