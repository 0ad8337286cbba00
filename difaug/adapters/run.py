"""A read-only view of a run directory, shared by export, the index, inspect and the report.

It reads the plan, the stats markers and the shards' *key* columns only (never the image bytes),
so opening a run of 100k auxiliary images costs a few MB. Only *verified* shards are listed
(`difaug.run.verify.verify_run`: marker of this plan, file of the recorded size and sha256); the
others are in `invalid` with their reasons and `fix` says which command redoes them. The view holds
the run directory's own records (`Plan`, `ShardStats`, `Failure`), as `difaug.run.records` parsed
and validated them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from difaug.run import layout, shards, verify
from difaug.run.records import Failure, Plan, RunDirError, ShardRange, ShardStats
from difaug.run.verify import RunCheck, ShardCheck

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


@dataclass(frozen=True)
class RunView:
    run_dir: Path
    check: RunCheck  # every planned shard's verdict, with the plan
    shard_paths: list[Path]  # the verified shards' files, in plan order
    # KEY_COLUMNS of every verified shard + where each row's bytes are: `_shard` (position in
    # shard_paths), `_group` (row group), `_in_group` (row inside that row group)
    keys: pa.Table
    failures: list[Failure]  # rows without images: from the verified markers and summary.json

    @property
    def plan(self) -> Plan:
        return self.check.plan

    @property
    def stats(self) -> list[ShardStats]:
        """The markers of the verified shards, in plan order (the same order as `shard_paths`)."""
        return [c.stats for c in self.check.done if c.stats is not None]

    @property
    def invalid(self) -> list[ShardCheck]:
        """Shards with a marker that does not verify (they are redone by `difaug generate`)."""
        return self.check.invalid

    @property
    def fix(self) -> str:
        """The command that redoes the invalid and unfinished shards."""
        return verify.fix_command(self.plan)

    @property
    def num_aux(self) -> int:
        """X, the number of aux images each sample should have."""
        return self.plan.num_aux

    def failure_reasons(self) -> Counter[str]:
        return Counter(f.reason for f in self.failures)

    def unfinished_shards(self) -> list[ShardRange]:
        """Planned shards that are not verified done (not run yet, still running, or invalid)."""
        return self.check.unfinished


def open_run(run_dir: str | Path) -> RunView:
    """Read a run directory's plan, verified markers and key columns. Raises `RunError` if it is
    not a run (or its plan is broken); shards that do not verify are listed in `invalid`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    try:
        check = verify.verify_run(run_dir)
    except (FileNotFoundError, RunDirError) as e:
        raise RunError(str(e)) from e
    done = check.done
    paths = [layout.shard_path(run_dir, c.shard.index) for c in done]
    return RunView(
        run_dir=run_dir,
        check=check,
        shard_paths=paths,
        keys=read_keys(paths, fix=verify.fix_command(check.plan)),
        failures=verify.failures_of(done) + list(summary_failures(run_dir, check.unfinished)),
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


def summary_failures(run_dir: Path, unfinished: Sequence[ShardRange]) -> Iterable[Failure]:
    """Failures of shards that failed as a whole (no marker; the runner lists them in summary.json).

    Only rows of shards that are still unfinished count: a later run may have redone the others."""
    summary = layout.read_summary(run_dir) if unfinished else None
    for f in summary.all_failures if summary else ():
        shard = next((s for s in unfinished if f.row in s), None)
        if shard is not None:
            yield Failure(f.row, f.sample_id, f.stage, f.reason, shard.name)
