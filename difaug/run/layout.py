"""The run directory's layout: where each file lives, how it is written and read, what may be deleted.

    OUT/difaug.json            the plan (`records.Plan`)
    OUT/.difaug.lock           the lock (`difaug.core.folderlock`): one `difaug generate` at a time
    OUT/shards/NNNNN.parquet   one shard per row range (written by the shard task)
    OUT/stats/NNNNN.json       its marker (`records.ShardStats`): written last; says "this shard is done"
    OUT/summary.json           the last run's reconciled counts and failures (`records.Summary`)

Everything difaug writes goes to a temp name beside its target (`.NAME.difaug-tmp-HOST-PID-RAND`,
`difaug.core.fsio.TEMP_NAME`), is fsynced and renamed into place, so a reader sees the whole file
or none of it. Only names of these patterns are ever deleted (`remove_temp_files`, `clear_run`): a
user's file in OUT, shards/ or stats/ is never touched. An OS error no retry can fix (read-only,
no space, a file where a folder should be) becomes `OutputError`, one line naming the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from difaug.core import fsio
from difaug.core.errors import describe_os_error
from difaug.core.folderlock import pid_alive
from difaug.run.records import Plan, RunDirError, ShardStats, Summary, shard_name

PLAN_FILE = "difaug.json"
SHARDS_DIR = "shards"
STATS_DIR = "stats"
SUMMARY_FILE = "summary.json"
GENERATE_COMMAND = "difaug generate"  # what holds the run directory's lock while shards are made

SHARD_FILE = re.compile(r"^(?P<index>\d{5,})\.parquet$")
MARKER_FILE = re.compile(r"^(?P<index>\d{5,})\.json$")
# Errors that no retry can fix: the task stops the run instead of failing again and again.
PERMANENT_ERRNOS = frozenset(
    e for e in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.ENOTDIR, errno.EDQUOT) if e
)


class OutputError(RunDirError):
    """OUT cannot be written (read-only, no permission, disk full, not a folder): retrying cannot help."""


def output_error(path: str | Path, error: OSError) -> OutputError:
    line = describe_os_error(OSError(error.errno, error.strerror or str(error), str(path)))
    return OutputError(f"{line}; then rerun the same command (finished shards are kept)")


def output_problem(error: BaseException, where: str | Path) -> str:
    """The one line that says which folder cannot be written and what to do (`is_permanent` errors)."""
    if isinstance(error, OutputError) or not isinstance(error, OSError):
        return str(error)
    return str(output_error(error.filename or where, error))


def is_permanent(error: BaseException) -> bool:
    """An error that a retry cannot fix (read-only OUT, no space, …; an error that says so itself,
    such as a model folder without its weights: `permanent`)."""
    if getattr(error, "permanent", False) is True:
        return True
    return isinstance(error, OutputError) or (isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS)


# ----------------------------------------------------------------------------- paths


def plan_path(out: str | Path) -> Path:
    return Path(out) / PLAN_FILE


def summary_path(out: str | Path) -> Path:
    return Path(out) / SUMMARY_FILE


def shard_path(out: str | Path, index: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(index)}.parquet"


def marker_path(out: str | Path, index: int) -> Path:
    return Path(out) / STATS_DIR / f"{shard_name(index)}.json"


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


def _write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_plan(out: str | Path, plan: Plan) -> Path:
    return _write_json(plan_path(out), plan.to_dict())


def write_marker(out: str | Path, stats: ShardStats) -> Path:
    """The marker: written after the shard file is in place (it is what says "done")."""
    return _write_json(marker_path(out, stats.shard), stats.to_dict())


def write_summary(out: str | Path, summary: Summary) -> Path:
    return _write_json(summary_path(out), summary.to_dict())


def probe_writable(out: str | Path, folders: tuple[str, ...] = (SHARDS_DIR, STATS_DIR)) -> None:
    """Create and remove a small temp file in each of OUT's `folders` (OUT/shards and OUT/stats;
    "" is OUT itself): OutputError when they cannot be written (read-only, no permission, no space),
    before any work is spent on a shard. The probe has difaug's temp name, so one left by a killed
    process goes with `remove_temp_files`."""
    for folder in (Path(out) / name for name in folders):
        tmp = fsio.temp_name(folder / "probe")
        ensure_dir(folder)
        try:
            tmp.write_bytes(b"difaug")  # a few bytes: an empty file is created even on a full disk
        except OSError as e:
            if is_permanent(e):
                raise output_error(folder, e) from e
            raise
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path, fix: str) -> Any:
    """JSON of a run-dir file; a clear RunDirError (file + `fix`) instead of a decode traceback."""
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
    return Plan.from_dict(_read_json(path, fix), path)


def read_marker(out: str | Path, index: int) -> ShardStats:
    path = marker_path(out, index)
    return ShardStats.from_dict(_read_json(path, "the shard is redone by the next `difaug generate`"), path)


def read_summary(out: str | Path) -> Summary | None:
    """The last run's summary, or None when there is none or it is unreadable (it is a report)."""
    path = summary_path(out)
    try:
        return Summary.from_dict(_read_json(path, ""), path)
    except (OSError, RunDirError):
        return None


# ----------------------------------------------------------------------------- owned names


def _temp_files(out: Path) -> Iterator[tuple[Path, re.Match[str]]]:
    for folder in (out, out / SHARDS_DIR, out / STATS_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if m := fsio.TEMP_NAME.match(p.name):
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
        if m["host"] != fsio.HOST:
            if age < foreign_after_s:
                continue
        elif pid != os.getpid() and pid_alive(pid):
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
    return any(p.parent.name in (SHARDS_DIR, STATS_DIR) for p in owned_files(out))
