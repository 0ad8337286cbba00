"""The run directory: its layout, its records, and the rules that keep a run whole.

    OUT/difaug.json            the plan (`Plan`): job config, manifest reference, shard row ranges
    OUT/.difaug.lock           the lock (`RunLock`): one `difaug generate` at a time, owner inside
    OUT/shards/NNNNN.parquet   one shard per row range (written by the shard task)
    OUT/stats/NNNNN.json       its marker (`ShardStats`): written last; says "this shard is done"
    OUT/summary.json           the last run's reconciled counts and failures (`Summary`)

Everything difaug writes goes to a temp name beside its target (`.NAME.difaug-tmp-HOST-PID-RAND`),
is fsynced and renamed into place, so a reader sees the whole file or none of it. Only names of
these patterns are ever deleted (`remove_temp_files`, `clear_run`): a user's file in OUT, shards/
or stats/ is never touched.

A shard counts as done only when it is *verified* (`verify_shard`): its marker parses, belongs to
the current plan (`plan_hash`), has consistent counts, and the Parquet file has the byte size,
row count and sha256 the marker recorded. Anything else is invalid, with the reason: `generate`
redoes it, `inspect` and `export` name it and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from difaug.core import fsio
from difaug.core.errors import DifaugError

log = logging.getLogger(__name__)

PLAN_FILE = "difaug.json"
SHARDS_DIR = "shards"
STATS_DIR = "stats"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".difaug.lock"
GENERATE_COMMAND = "difaug generate"  # the lock's default holder (`RunLock(command=…)` names others)
PLAN_VERSION = 2  # 2: manifest fingerprinted over its own text (paths as written), markers verified
MARKER_VERSION = 2  # 2: the marker records the shard file's size, rows and sha256

_HOST = fsio.HOST
TEMP_NAME = fsio.TEMP_NAME  # the one pattern of difaug's temp files (difaug.core.fsio)
SHARD_FILE = re.compile(r"^(?P<index>\d{5,})\.parquet$")
MARKER_FILE = re.compile(r"^(?P<index>\d{5,})\.json$")
# Errors that no retry can fix: the task stops the run instead of failing again and again.
PERMANENT_ERRNOS = frozenset(
    e for e in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.ENOTDIR, errno.EDQUOT) if e
)


class RunDirError(DifaugError, ValueError):
    """A run directory file that cannot be used as it is; the message names the file and the fix."""


class LockError(RunDirError):
    """Another `difaug generate` holds the run directory."""


class OutputError(RunDirError):
    """OUT cannot be written (read-only, no permission, disk full, not a folder): retrying cannot help."""


def output_error(path: str | Path, error: OSError) -> OutputError:
    from difaug.core.errors import describe_os_error

    line = describe_os_error(OSError(error.errno, error.strerror or str(error), str(path)))
    return OutputError(f"{line}; then rerun the same command (finished shards are kept)")


def output_problem(error: BaseException, where: str | Path) -> str:
    """The one line that says which folder cannot be written and what to do (`is_permanent` errors)."""
    if isinstance(error, OutputError) or not isinstance(error, OSError):
        return str(error)
    return str(output_error(error.filename or where, error))


def is_permanent(error: BaseException) -> bool:
    """An error that a retry cannot fix (read-only OUT, no space, …)."""
    return isinstance(error, OutputError) or (isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS)


# ----------------------------------------------------------------------------- layout


def shard_name(index: int) -> str:
    return f"{index:05d}"


def plan_path(out: str | Path) -> Path:
    return Path(out) / PLAN_FILE


def summary_path(out: str | Path) -> Path:
    return Path(out) / SUMMARY_FILE


def shard_path(out: str | Path, index: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.parquet"


def marker_path(out: str | Path, index: int) -> Path:
    return Path(out) / STATS_DIR / f"{shard_name(index)}.json"


def marker_indices(out: str | Path) -> list[int]:
    """Indices of the markers present (any plan), in order; other files in stats/ are ignored."""
    folder = Path(out) / STATS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(m["index"]) for p in folder.iterdir() if (m := MARKER_FILE.match(p.name)))


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ShardRange:
    """A shard: manifest rows `[start, stop)` (1-based), file name `shard_name(index)`."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def num_rows(self) -> int:
        return max(0, self.stop - self.start)

    def __len__(self) -> int:
        return self.num_rows

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int) and self.start <= row < self.stop


def cut(rows: int, shard_size: int) -> list[ShardRange]:
    """Rows 1..`rows` in ranges of `shard_size`, manifest order."""
    return [
        ShardRange(i, start, min(start + shard_size, rows + 1))
        for i, start in enumerate(range(1, rows + 1, shard_size))
    ]


@dataclass(frozen=True)
class Failure:
    """One manifest row that got no images, and why. `shard` is the shard's name ("" = unknown)."""

    row: int | None
    sample_id: str
    stage: str  # manifest, validate, read, condition, encode, task
    reason: str
    shard: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"row": self.row, "sample_id": self.sample_id, "stage": self.stage, "reason": self.reason}
        return d | ({"shard": self.shard} if self.shard else {})

    def __getitem__(self, key: str) -> Any:
        """`failure["reason"]`: the dict shape failures had before this record (transitional)."""
        return self.to_dict()[key]

    @classmethod
    def from_dict(cls, d: Any, shard: str = "") -> Failure:
        """Lenient: a summary or marker from another version gives what it has."""
        if not isinstance(d, Mapping):
            return cls(None, "", "", str(d), shard)
        row = d.get("row")
        return cls(
            row if isinstance(row, int) and not isinstance(row, bool) else None,
            str(d.get("sample_id") or ""),
            str(d.get("stage") or ""),
            str(d.get("reason") or "unknown"),
            str(d.get("shard") or shard),
        )


@dataclass(frozen=True)
class ManifestRef:
    """Where the plan's manifest was and what of it was fingerprinted."""

    path: str  # as given
    folder: str  # absolute folder the manifest's relative paths resolve against
    fingerprint: str
    rows: int
    fingerprinted: str = "rows as written in the manifest (relative paths unresolved)"


@dataclass(frozen=True)
class Plan:
    """The plan file. `plan_hash` covers what decides the shards' contents: config fingerprint,
    manifest fingerprint and rows, limit and shard list — not where OUT or the manifest live."""

    config: dict[str, Any]
    config_fingerprint: str
    manifest: ManifestRef
    limit: int
    rows: int
    shard_size: int
    shards: tuple[ShardRange, ...]
    version: int = PLAN_VERSION
    created_by: str = ""
    created: str = ""
    command: str = ""  # the `difaug generate` command line that made it, when run from the CLI
    cwd: str = ""  # …and where it ran
    plan_hash: str = ""

    def __post_init__(self) -> None:
        if not self.plan_hash:
            object.__setattr__(self, "plan_hash", self.compute_hash())

    def compute_hash(self) -> str:
        keep = {
            "version": self.version,
            "config_fingerprint": self.config_fingerprint,
            "limit": self.limit,
            "rows": self.rows,
            "shard_size": self.shard_size,
            "shards": [{"index": s.index, "rows": [s.start, s.stop]} for s in self.shards],
            "manifest": {"fingerprint": self.manifest.fingerprint, "rows": self.manifest.rows},
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    def shard(self, index: int) -> ShardRange:
        return self.shards[index]

    @property
    def num_aux(self) -> int:
        """X, the aux images per sample: held once, in the job config."""
        return int(self.config.get("num_aux") or 0)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["manifest"] = asdict(self.manifest)
        d["shards"] = [{"index": s.index, "rows": [s.start, s.stop]} for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = PLAN_FILE) -> Plan:
        try:
            m = d["manifest"]
            plan = cls(
                config=dict(d["config"]),
                config_fingerprint=str(d["config_fingerprint"]),
                manifest=ManifestRef(
                    path=str(m["path"]),
                    folder=str(m.get("folder") or ""),
                    fingerprint=str(m["fingerprint"]),
                    rows=int(m["rows"]),
                    fingerprinted=str(m.get("fingerprinted") or "resolved paths (difaug plan version 1)"),
                ),
                limit=int(d.get("limit") or 0),
                rows=int(d["rows"]),
                shard_size=int(d["shard_size"]),
                shards=tuple(
                    ShardRange(int(s["index"]), int(s["rows"][0]), int(s["rows"][1])) for s in d["shards"]
                ),
                version=int(d["version"]),
                created_by=str(d.get("created_by") or ""),
                created=str(d.get("created") or ""),
                command=str(d.get("command") or ""),
                cwd=str(d.get("cwd") or ""),
                plan_hash=str(d["plan_hash"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RunDirError(
                f"{source} is not a difaug plan ({_what(e)}); rerun `difaug generate` with --overwrite "
                "to start this run over (only difaug's own files are removed)"
            ) from e
        if [s.index for s in plan.shards] != list(range(len(plan.shards))):
            raise RunDirError(f"{source}: shard indices are not 0..N-1; rerun with --overwrite")
        return plan


def _what(e: BaseException) -> str:
    return f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class ShardFile:
    """What a marker says the shard file is: verified against the file before it is trusted."""

    bytes: int
    rows: int
    sha256: str


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ShardStats:
    """A shard's marker. `done + failed == rows`, `images == file.rows`."""

    shard: int
    rows: tuple[int, int]  # [start, stop) of the manifest
    plan_hash: str
    done: int  # rows with all their images
    failed: int
    images: int
    file: ShardFile
    failures: tuple[Failure, ...] = ()
    # Seconds per stage (read, condition, generate, warmup, encode, write, score, …): stages only,
    # so they may be summed. The task's totals are apart: they overlap the stages.
    seconds: dict[str, float] = field(default_factory=dict)
    load_seconds: float | None = None  # building the models (0 when the process had them cached)
    wall_seconds: float | None = None  # the whole task, start to marker (incl. waiting for its turn)
    # CPU time of the worker process (all threads) during the task; a worker overlaps two shard
    # tasks, so the neighbouring shard's work in the same seconds is counted in both
    cpu_seconds: float | None = None
    fallbacks: dict[str, int] = field(default_factory=dict)
    # What went wrong but did not fail the shard: a torch.compile that fell back to eager, …
    compile_warnings: tuple[str, ...] = ()
    worker: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    version: int = MARKER_VERSION

    @property
    def samples(self) -> int:
        return self.rows[1] - self.rows[0]

    def __getitem__(self, key: str) -> Any:
        """`stats["done"]`: the dict shape `run_shard` returned before this record (transitional)."""
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["rows"] = list(self.rows)
        d["file"] = asdict(self.file)
        d["failures"] = [f.to_dict() for f in self.failures]
        d["compile_warnings"] = list(self.compile_warnings)
        d["samples"] = self.samples
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "marker") -> ShardStats:
        """Strict: a marker that is not exactly what the worker writes raises RunDirError."""
        try:
            if int(d.get("version") or 1) < MARKER_VERSION:
                raise ValueError("written by an older difaug, without the shard file's checksum")
            name = shard_name(int(d["shard"]))
            stats = cls(
                shard=int(d["shard"]),
                rows=(int(d["rows"][0]), int(d["rows"][1])),
                plan_hash=str(d["plan_hash"]),
                done=int(d["done"]),
                failed=int(d["failed"]),
                images=int(d["images"]),
                file=ShardFile(int(d["file"]["bytes"]), int(d["file"]["rows"]), str(d["file"]["sha256"])),
                failures=tuple(Failure.from_dict(f, name) for f in d["failures"]),
                seconds=dict(d.get("seconds") or {}),
                load_seconds=_optional_float(d.get("load_seconds")),
                wall_seconds=_optional_float(d.get("wall_seconds")),
                cpu_seconds=_optional_float(d.get("cpu_seconds")),
                fallbacks=dict(d.get("fallbacks") or {}),
                compile_warnings=tuple(str(w) for w in d.get("compile_warnings") or ()),
                worker=dict(d.get("worker") or {}),
                started=str(d.get("started") or ""),
                finished=str(d.get("finished") or ""),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise RunDirError(f"{source}: not a valid shard marker ({_what(e)})") from e
        problems = []
        if stats.done + stats.failed != stats.samples:
            problems.append(f"done {stats.done} + failed {stats.failed} != {stats.samples} rows")
        if len(stats.failures) != stats.failed:
            problems.append(f"{len(stats.failures)} failures listed but failed = {stats.failed}")
        if stats.images != stats.file.rows:
            problems.append(f"images {stats.images} != file rows {stats.file.rows}")
        if problems:
            raise RunDirError(f"{source}: inconsistent marker ({'; '.join(problems)})")
        return stats


@dataclass
class Summary:
    """`OUT/summary.json`: one run's counts (manifest rows unless named images/shards) and failures.

    `done + failed + skipped + not_run == rows` always (`reconcile`)."""

    out: str
    rows: int
    shards: int
    done: int = 0  # rows that got all their images in this run
    failed: int = 0  # rows recorded as failed in this run (bad input, or a shard that kept failing)
    skipped: int = 0  # rows of shards finished (and verified) before this run
    skipped_failed: int = 0  # of those, rows that had failed back then
    not_run: int = 0  # rows of shards never attempted because the run stopped (`stopped` says why)
    images: int = 0  # images written in this run
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: list[int] = field(default_factory=list)
    redone_shards: dict[str, str] = field(default_factory=dict)  # invalid shard name → reason
    failures: list[Failure] = field(default_factory=list)  # this run's failures
    all_failures: list[Failure] = field(default_factory=list)  # this run's + verified earlier ones
    stopped: str = ""  # why the run stopped early ("" = it did not)
    seconds: float = 0.0
    dashboard: str = ""

    @property
    def ok(self) -> bool:
        """Every planned row has its images (now or from an earlier run)."""
        return self.failed == 0 and self.skipped_failed == 0 and self.not_run == 0 and not self.stopped

    def reconcile(self) -> None:
        total = self.done + self.failed + self.skipped + self.not_run
        if total != self.rows:
            raise RuntimeError(
                f"summary does not add up: done {self.done} + failed {self.failed} + skipped "
                f"{self.skipped} + not run {self.not_run} = {total}, but the plan has {self.rows} rows"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["failures"] = [f.to_dict() for f in self.failures]
        d["all_failures"] = [f.to_dict() for f in self.all_failures]
        d["ok"] = self.ok
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = SUMMARY_FILE) -> Summary:
        try:
            names = {f.name for f in fields(cls)}
            kw = {"out": str(source), "rows": 0, "shards": 0} | {k: v for k, v in d.items() if k in names}
            kw["failures"] = [Failure.from_dict(f) for f in d.get("failures") or ()]
            kw["all_failures"] = [Failure.from_dict(f) for f in d.get("all_failures") or ()]
            return cls(**kw)
        except (TypeError, AttributeError) as e:
            raise RunDirError(f"{source}: not a difaug summary ({_what(e)})") from e


# ----------------------------------------------------------------------------- writing


def ensure_dir(folder: Path) -> None:
    """`mkdir -p folder`; OutputError when a file stands in its way or it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file of that name
        raise output_error(folder, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from e
    except OSError as e:
        if is_permanent(e):
            raise output_error(folder, e) from e
        raise


temp_name = fsio.temp_name


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`difaug.core.fsio.atomic_write` with fsync, for the run directory's files: a crash leaves at most
    a temp file (never read; removed by `remove_temp_files`), and a permanent OS error (read-only,
    no space, a file where a folder should be) becomes OutputError naming the folder."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        return fsio.atomic_write(path, write, fsync=True)
    except OSError as e:
        if is_permanent(e):
            raise output_error(path.parent, e) from e
        raise


def json_text(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    text = json_text(data)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_plan(out: str | Path, plan: Plan) -> Path:
    return write_json(plan_path(out), plan.to_dict())


def write_marker(out: str | Path, stats: ShardStats) -> Path:
    """The marker: written after the shard file is in place (it is what says "done")."""
    return write_json(marker_path(out, stats.shard), stats.to_dict())


def write_summary(out: str | Path, summary: Summary) -> Path:
    return write_json(summary_path(out), summary.to_dict())


def probe_writable(out: str | Path) -> None:
    """Create and remove a temp file in OUT/shards and OUT/stats: OutputError when they cannot be
    written (read-only, no permission, no space), before any work is spent on a shard."""
    for folder in (Path(out) / SHARDS_DIR, Path(out) / STATS_DIR):
        tmp = temp_name(folder / "probe")
        ensure_dir(folder)
        try:
            tmp.write_bytes(b"")
        except OSError as e:
            if is_permanent(e):
                raise output_error(folder, e) from e
            raise
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def rewrite_marker(out: str | Path, stats: ShardStats, **changes: Any) -> ShardStats:
    """After a shard file was rewritten in place (e.g. scores added), record its new size and
    checksum in its marker, with `changes` to other marker fields. Verify the shard *before* the
    rewrite: this vouches for whatever file is there now."""
    path = shard_path(out, stats.shard)
    new = replace(stats, file=file_record(path, stats.file.rows), **changes)
    write_marker(out, new)
    return new


def file_record(path: str | Path, rows: int) -> ShardFile:
    """Size, row count and sha256 of a shard file as it is on disk (for its marker)."""
    return ShardFile(Path(path).stat().st_size, rows, file_sha256(path))


# ----------------------------------------------------------------------------- reading


def read_json(path: str | Path, fix: str) -> Any:
    """JSON of a run-dir file; a clear RunDirError (file + `fix`) instead of a decode traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); {fix}") from e


def read_plan(out: str | Path) -> Plan:
    """The plan of OUT. FileNotFoundError when there is none; RunDirError when it is broken."""
    path = plan_path(out)
    if not path.is_file():
        raise FileNotFoundError(f"no plan in {out}: {PLAN_FILE} is missing (is this a difaug run dir?)")
    fix = "rerun `difaug generate` with --overwrite to start this run over"
    return Plan.from_dict(read_json(path, fix), path)


def read_marker(out: str | Path, index: int) -> ShardStats:
    path = marker_path(out, index)
    return ShardStats.from_dict(read_json(path, "the shard is redone by the next `difaug generate`"), path)


def read_summary(out: str | Path) -> Summary | None:
    """The last run's summary, or None when there is none or it is unreadable (it is a report)."""
    path = summary_path(out)
    try:
        return Summary.from_dict(read_json(path, ""), path)
    except (OSError, RunDirError):
        return None


# ----------------------------------------------------------------------------- verifying

# (path, size, mtime_ns, inode) → sha256: a shard is hashed once per process while unchanged.
_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA_CACHE:
        with open(path, "rb") as fh:
            _SHA_CACHE[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _SHA_CACHE[key]


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


def verify_shard(out: str | Path, plan: Plan, shard: ShardRange) -> ShardCheck:
    """Is `shard` finished for `plan`? Checks marker (parses, plan hash, row range, counts) and file
    (size, sha256) against each other; the reason says what does not match."""
    marker = marker_path(out, shard.index)
    if not marker.is_file():
        return ShardCheck(shard, "missing")
    try:
        stats = read_marker(out, shard.index)
    except RunDirError as e:
        return ShardCheck(shard, "invalid", str(e))
    path = shard_path(out, shard.index)
    reason = ""
    if stats.plan_hash != plan.plan_hash:
        reason = (
            f"{marker}: marker of another plan (plan_hash {stats.plan_hash[:12]}, now {plan.plan_hash[:12]})"
        )
    elif (stats.shard, stats.rows) != (shard.index, (shard.start, shard.stop)):
        reason = f"{marker}: marker of shard {stats.shard} rows {list(stats.rows)}, plan says [{shard.start}, {shard.stop})"
    elif not path.is_file():
        reason = f"{path} is missing"
    else:
        size = path.stat().st_size
        if size != stats.file.bytes:
            reason = f"{path}: {size} bytes, its marker says {stats.file.bytes} (truncated or replaced)"
        elif file_sha256(path) != stats.file.sha256:
            reason = f"{path}: sha256 differs from its marker (the file was changed or corrupted)"
    if reason:
        return ShardCheck(shard, "invalid", reason, stats)
    return ShardCheck(shard, "done", "", stats)


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


# ----------------------------------------------------------------------------- owned names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_files(out: Path) -> Iterator[tuple[Path, re.Match[str]]]:
    for folder in (out, out / SHARDS_DIR, out / STATS_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if m := TEMP_NAME.match(p.name):
                    yield p, m


def remove_temp_files(out: str | Path, *, foreign_after_s: float = 6 * 3600) -> int:
    """Delete difaug temp files of dead writers; returns how many went. Only difaug's pattern.

    A temp file of this host whose pid is alive may belong to a writer that is finishing, so it
    stays (it is never read either way). Another host's pids cannot be checked from here: its temp
    files go only once they are older than `foreign_after_s` (no shard write takes that long)."""
    n, now = 0, time.time()
    for tmp, m in _temp_files(Path(out)):
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        pid = int(m["pid"])
        if m["host"] != _HOST:
            if age < foreign_after_s:
                continue
        elif pid != os.getpid() and _pid_alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def owned_files(out: str | Path) -> list[Path]:
    """Files of OUT that difaug wrote: plan, summary, shards, markers, temp files (not the lock)."""
    out = Path(out)
    found = [p for p in (plan_path(out), summary_path(out)) if p.is_file()]
    for sub, pattern in ((SHARDS_DIR, SHARD_FILE), (STATS_DIR, MARKER_FILE)):
        if (out / sub).is_dir():
            found += sorted(p for p in (out / sub).iterdir() if pattern.match(p.name) and p.is_file())
    return found + [p for p, _ in _temp_files(out)]


def clear_run(out: str | Path) -> int:
    """Delete what difaug wrote (`owned_files`); any other file stays, and so do shards/ and stats/
    when they hold one. Returns how many files went. Call it holding the lock."""
    files = owned_files(out)
    for p in files:
        p.unlink(missing_ok=True)
    for sub in (SHARDS_DIR, STATS_DIR):
        with contextlib.suppress(OSError):  # not empty (a user's file) or not there
            (Path(out) / sub).rmdir()
    return len(files)


def has_run_files(out: str | Path) -> bool:
    """Shards or markers of some run, whatever the plan."""
    out = Path(out)
    return any(p.parent.name in (SHARDS_DIR, STATS_DIR) for p in owned_files(out))


# ----------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: str
    command: str = GENERATE_COMMAND  # what holds it (records from before `command` existed: generate)

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"


def _read_owner(fd: int) -> LockOwner | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        d = json.loads(data.decode("utf-8"))
        command = str(d.get("command") or GENERATE_COMMAND)
        return LockOwner(str(d["host"]), int(d["pid"]), str(d.get("started") or "?"), command)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class RunLock:
    """An exclusive OS lock on `OUT/.difaug.lock` for a whole run, owner written inside.

    - free → taken;
    - held by a live process (the OS lock is held) → LockError naming the owner; with `on_wait`,
      `on_wait(owner)` is called instead and the lock is waited for (then as below);
    - left behind by a dead process of this host (the OS lock was released, the owner stayed) →
      taken over, with a logged message;
    - left by another host (whose process this host cannot check) → LockError naming the owner
      and `--force-unlock`, unless `force` is set.
    `force` also breaks a lock that is still held: the lock file is replaced by a new one.
    `command` names the holder in the record and in messages (`difaug export` locks its folder too)."""

    def __init__(
        self,
        out: str | Path,
        *,
        force: bool = False,
        command: str = GENERATE_COMMAND,
        on_wait: Callable[[LockOwner | None], None] | None = None,
    ) -> None:
        self.path = Path(out) / LOCK_FILE
        self.force = force
        self.command = command
        self.on_wait = on_wait
        self.fd: int | None = None
        self.took_over: LockOwner | None = None

    def acquire(self) -> RunLock:
        ensure_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if is_permanent(e):
                raise output_error(self.path.parent, e) from e
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            alive_here = owner is not None and owner.host == _HOST and _pid_alive(owner.pid)
            if self.on_wait is not None and not self.force:
                self.on_wait(owner)
                fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder releases it or dies
            else:
                os.close(fd)
                if not self.force or alive_here:
                    who = str(owner) if owner else "another process"
                    hint = (
                        " If that process is gone, pass --force-unlock."
                        if owner and owner.host != _HOST
                        else " Wait for it to finish, or use another --out."
                    )
                    holder = owner.command if owner else self.command
                    raise LockError(f"{self.path.parent} is in use by {holder} ({who}).{hint}") from None
                log.warning("%s: breaking the lock held by %s (--force-unlock)", self.path, owner)
                self.path.unlink(missing_ok=True)
                return self.acquire_fresh()
        owner = _read_owner(fd)
        if owner is not None and owner.host != _HOST and not self.force:
            os.close(fd)
            raise LockError(
                f"{self.path} was left by {owner.command} ({owner}); this host cannot tell whether it "
                "still runs. If it does not, pass --force-unlock."
            )
        if owner is not None:
            self.took_over = owner
            log.warning("%s: took over the lock left by %s (no longer running)", self.path, owner)
        self.fd = fd
        self._write_owner()
        return self

    def acquire_fresh(self) -> RunLock:
        self.force = False
        return self.acquire()

    def _write_owner(self) -> None:
        assert self.fd is not None
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = {"host": _HOST, "pid": os.getpid(), "started": now, "command": self.command}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record).encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # a clean exit leaves no owner: the next run need not guess
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_owner(out: str | Path) -> LockOwner | None:
    """Who holds (or last held and did not release) OUT's lock, if anyone is recorded."""
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_owner(fd)
    finally:
        os.close(fd)


def failures_of(checks: Iterable[ShardCheck]) -> list[Failure]:
    """Failures recorded in the markers of verified shards."""
    return [f for c in checks if c.ok and c.stats for f in c.stats.failures]


def ranges_text(shards: Sequence[ShardRange]) -> str:
    return ", ".join(s.name for s in shards)
