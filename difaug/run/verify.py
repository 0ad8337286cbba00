"""Which shards of a run are done: a shard counts only when it is *verified*.

`verify_shard`: its marker parses, belongs to the current plan (`plan_hash`), has consistent counts,
and the Parquet file has the byte size, row count and sha256 the marker recorded. Anything else is
invalid, with the reason: `generate` redoes it, `inspect` and `export` name it and the command that
fixes it (`fix_command`). A file is hashed once per process while it is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from difaug.run.layout import marker_path, read_marker, read_plan, shard_path, write_marker
from difaug.run.records import Failure, Plan, RunDirError, ShardFile, ShardRange, ShardStats

# (path, size, mtime_ns, inode) → sha256: a shard is hashed once per process while unchanged.
_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def _hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        # 1 MiB blocks (`hashlib.file_digest` is Python 3.11+); sha256 releases the GIL per block
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = _hash_file(path)
    return _SHA_CACHE[key]


def file_record(path: str | Path, rows: int) -> ShardFile:
    """Size, row count and sha256 of a shard file as it is on disk (for its marker)."""
    return ShardFile(Path(path).stat().st_size, rows, file_sha256(path))


def rewrite_marker(out: str | Path, stats: ShardStats, **changes: Any) -> ShardStats:
    """After a shard file was rewritten in place (e.g. scores added), record its new size and
    checksum in its marker, with `changes` to other marker fields. Verify the shard *before* the
    rewrite: this vouches for whatever file is there now."""
    path = shard_path(out, stats.shard)
    new = replace(stats, file=file_record(path, stats.file.rows), **changes)
    write_marker(out, new)
    return new


@dataclass(frozen=True)
class ShardCheck:
    """The verdict on one planned shard: `done` (verified), `missing` (no marker) or `invalid`."""

    shard: ShardRange
    status: Literal["done", "missing", "invalid"]
    reason: str = ""
    stats: ShardStats | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True)
class RunCheck:
    plan: Plan
    checks: tuple[ShardCheck, ...]

    @property
    def done(self) -> list[ShardCheck]:
        return [c for c in self.checks if c.status == "done"]

    @property
    def invalid(self) -> list[ShardCheck]:
        return [c for c in self.checks if c.status == "invalid"]

    @property
    def unfinished(self) -> list[ShardRange]:
        return [c.shard for c in self.checks if c.status != "done"]


def _mismatch(out: str | Path, plan: Plan, shard: ShardRange, stats: ShardStats) -> str:
    """Why a parsed marker and its file do not vouch for `shard` of `plan` ("" when they do)."""
    marker, path = marker_path(out, shard.index), shard_path(out, shard.index)
    if stats.plan_hash != plan.plan_hash:
        return (
            f"{marker}: marker of another plan (plan_hash {stats.plan_hash[:12]}, now {plan.plan_hash[:12]})"
        )
    if (stats.shard, stats.rows) != (shard.index, (shard.start, shard.stop)):
        return f"{marker}: marker of shard {stats.shard} rows {list(stats.rows)}, plan says [{shard.start}, {shard.stop})"
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != stats.file.bytes:
        return f"{path}: {size} bytes, its marker says {stats.file.bytes} (truncated or replaced)"
    if file_sha256(path) != stats.file.sha256:
        return f"{path}: sha256 differs from its marker (the file was changed or corrupted)"
    return ""


def verify_shard(out: str | Path, plan: Plan, shard: ShardRange) -> ShardCheck:
    """Is `shard` finished for `plan`? Checks marker (parses, plan hash, row range, counts) and file
    (size, sha256) against each other; the reason says what does not match."""
    if not marker_path(out, shard.index).is_file():
        return ShardCheck(shard, "missing")
    try:
        stats = read_marker(out, shard.index)
    except RunDirError as e:
        return ShardCheck(shard, "invalid", str(e))
    reason = _mismatch(out, plan, shard, stats)
    return ShardCheck(shard, "invalid" if reason else "done", reason, stats)


def verify_run(out: str | Path, plan: Plan | None = None) -> RunCheck:
    """Every planned shard's verdict (reads the plan when not given)."""
    plan = plan or read_plan(out)
    if len(plan.shards) < 2:
        return RunCheck(plan, tuple(verify_shard(out, plan, s) for s in plan.shards))
    # sha256 releases the GIL on large buffers: a few threads hash a big run several times faster.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="difaug-verify") as pool:
        return RunCheck(plan, tuple(pool.map(lambda s: verify_shard(out, plan, s), plan.shards)))


def fix_command(plan: Plan) -> str:
    """What the user runs to redo invalid or missing shards."""
    if plan.command:
        where = f" (in {plan.cwd})" if plan.cwd else ""
        return f"rerun `{plan.command}`{where}; it redoes only these shards"
    return "rerun the same `difaug generate` command; it redoes only these shards"


def failures_of(checks: Iterable[ShardCheck]) -> list[Failure]:
    """Failures recorded in the markers of verified shards."""
    return [f for c in checks if c.ok and c.stats for f in c.stats.failures]
