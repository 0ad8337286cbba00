"""One difaug command at a time per folder: an OS lock on `FOLDER/.difaug.lock`, owner inside.

A run directory (`difaug generate`, `difaug score`) and an export folder (`difaug export`) are
locked the same way. The lock file holds a small JSON record of who holds it (`LockOwner`: host,
pid, start time, command), so a refusal names the holder, and a lock left behind by a dead process
can be told from one still held. `flock` is released by the OS when its holder dies, so a crashed
run never blocks the next one on the same host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from difaug.core import fsio
from difaug.core.errors import DifaugError

log = logging.getLogger(__name__)

LOCK_FILE = ".difaug.lock"
_UNNAMED_HOLDER = "another difaug command"  # a record that names no command


class LockError(DifaugError, ValueError):
    """Another difaug command holds the folder; the message names it and what to do."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or last held) a folder's lock."""

    host: str
    pid: int
    started: str
    command: str = _UNNAMED_HOLDER

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"


def wait_message(folder: str | Path, owner: LockOwner | None, holder: str = "another export") -> str:
    """The line shown while waiting for the command that holds `folder`'s lock (`on_wait`)."""
    who = f"{owner.command} ({owner})" if owner else holder
    return f"waiting for {who} to finish with {folder} …"


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(fd: int) -> LockOwner | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        d = json.loads(data.decode("utf-8"))
        command = str(d.get("command") or _UNNAMED_HOLDER)
        return LockOwner(str(d["host"]), int(d["pid"]), str(d.get("started") or "?"), command)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def lock_owner(folder: str | Path) -> LockOwner | None:
    """Who holds (or last held and did not release) the folder's lock, if anyone is recorded."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_owner(fd)
    finally:
        os.close(fd)


def takeover_reason(owner: LockOwner) -> str:
    """Why a recorded owner whose OS lock is released does not hold the folder: it died, or its pid
    now belongs to another process (the pid was reused: alive, but holding no lock here)."""
    if pid_alive(owner.pid):
        return f"pid {owner.pid} is alive but holds no lock on the folder: not that difaug command any more"
    return "no longer running"


class FolderLock:
    """An exclusive OS lock on `FOLDER/.difaug.lock` for as long as `command` works in FOLDER.

    - free → taken;
    - held by a live process (the OS lock is held) → LockError naming the owner; with `on_wait`,
      `on_wait(owner)` is called instead and the lock is waited for (then as below);
    - left behind by a dead process of this host (the OS lock was released, the owner stayed) →
      taken over (`took_over` names it), with a logged message;
    - left by another host (whose process this host cannot check) → LockError naming the owner
      and `--force-unlock`, unless `force` is set.
    `force` also breaks a lock that is still held: the lock file is replaced by a new one.
    FOLDER is created when missing; an OS error doing so, or opening the lock file, is raised as
    it is (it names the path)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        command: str,
        force: bool = False,
        on_wait: Callable[[LockOwner | None], None] | None = None,
        busy_hint: str = "Wait for it to finish, or use another --out.",
        log_takeover: bool = True,
    ) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.busy_hint = busy_hint  # what to do about a live holder: each verb's own words
        self.log_takeover = log_takeover  # False: the caller reports `took_over_note` itself (once)
        self.waited = False  # whether acquire waited for another holder (what it read may be stale)
        self.took_over_note = ""
        self.force = force
        self.command = command
        self.on_wait = on_wait
        self.fd: int | None = None
        self.took_over: LockOwner | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            if self.on_wait is not None and not self.force:
                self.on_wait(owner)
                fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder releases it or dies
                self.waited = True
            else:
                os.close(fd)
                return self._break_held(owner)
        owner = _read_owner(fd)
        if owner is not None and owner.host != fsio.HOST and not self.force:
            os.close(fd)
            raise LockError(
                f"{self.path} was left by {owner.command} ({owner}); this host cannot tell whether it "
                "still runs. If it does not, pass --force-unlock."
            )
        if owner is not None:
            self.took_over = owner
            self.took_over_note = f"{owner} ({takeover_reason(owner)})"
            if self.log_takeover:
                log.warning("%s: took over the lock left by %s", self.path, self.took_over_note)
        self.fd = fd
        self._write_owner()
        return self

    def _break_held(self, owner: LockOwner | None) -> FolderLock:
        """The lock is held: refuse, or with `force` (never for a live process of this host)
        replace the lock file and take the new one."""
        alive_here = owner is not None and owner.host == fsio.HOST and pid_alive(owner.pid)
        if not self.force or alive_here:
            who = str(owner) if owner else "another process"
            hint = (
                " If that process is gone, pass --force-unlock."
                if owner and owner.host != fsio.HOST
                else f" {self.busy_hint}"
            )
            holder = owner.command if owner else self.command
            raise LockError(f"{self.path.parent} is in use by {holder} ({who}).{hint}")
        log.warning("%s: breaking the lock held by %s (--force-unlock)", self.path, owner)
        self.path.unlink(missing_ok=True)
        self.force = False
        return self.acquire()

    def _write_owner(self) -> None:
        assert self.fd is not None
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = {"host": fsio.HOST, "pid": os.getpid(), "started": now, "command": self.command}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record).encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # a clean exit leaves no owner: the next command need not guess
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
