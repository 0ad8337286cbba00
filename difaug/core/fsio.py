"""Atomic file writes: the one way difaug puts a file in place.

A file is written to a temp name beside its target (`.NAME.difaug-tmp-HOST-PID-RAND`), optionally
fsynced, and renamed over the target, so a reader sees the whole old file or the whole new one,
never half. The temp name carries host, pid and a random part, so concurrent writers (threads, two
attempts at one shard on a shared file system) never write into the same temp file, and a temp
file left by a dead writer can be recognised (`TEMP_NAME`) and removed by its owner
(`difaug.run.layout.remove_temp_files`).

OS errors are raised as they are (naming the path); the run directory turns the permanent ones
into its own one-line error (`difaug.run.layout.atomic_write`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

HOST = socket.gethostname().replace("-", "_") or "host"
_TEMP_TAG = ".difaug-tmp-"
# ".<target name>.difaug-tmp-<host>-<pid>-<8 hex>": the one pattern of difaug's temp files.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.difaug-tmp-(?P<host>[^-/]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})$")


def temp_name(target: Path) -> Path:
    """A fresh temp path beside `target` (see `TEMP_NAME`)."""
    return target.with_name(f".{target.name}{_TEMP_TAG}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, write: Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Call `write(tmp)` for a temp name beside `path`, then rename it over `path`.

    `fsync=True` (run-directory files: a shard, its marker, the plan) flushes the file and the
    rename to disk, so a power cut cannot leave a marker pointing at a shard that is not there;
    files a rerun simply rewrites (exports, sheets, HTML) skip it. A failure leaves no temp file.
    The target's folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            with contextlib.suppress(OSError):  # the rename itself durable, where the OS allows it
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """`atomic_write` of `data`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """`atomic_write` of `text` as UTF-8."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def write_if_changed(path: str | Path, data: bytes, *, fsync: bool = False) -> bool:
    """Atomically write `data` unless the file already holds exactly it (a re-export leaves
    unchanged files, and their times, alone). True if written."""
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes(path, data, fsync=fsync)
    return True
