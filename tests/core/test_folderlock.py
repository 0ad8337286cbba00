"""The folder lock: one difaug command per folder, the holder named, a dead holder's lock taken over.

Real processes hold the lock (a subprocess that takes it and sleeps, or is killed), so the OS lock
and the owner record are the ones a second command really meets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from difaug.core import fsio
from difaug.core.folderlock import LOCK_FILE, FolderLock, LockError, LockOwner, lock_owner, wait_message

REPO = Path(__file__).resolve().parents[2]

_HOLD = textwrap.dedent(
    """
    import sys, time
    from difaug.core.folderlock import FolderLock
    lock = FolderLock(sys.argv[1], command="difaug export").acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # until the test says so
    lock.release()
    """
)


def _holder(folder: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_free_lock_is_taken_and_a_clean_release_leaves_no_owner(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "folder"  # created by the lock
    with FolderLock(folder, command="difaug score") as lock:
        owner = lock_owner(folder)
        assert owner is not None and (owner.host, owner.pid, owner.command) == (
            fsio.HOST,
            os.getpid(),
            "difaug score",
        )
        assert lock.took_over is None
    assert lock_owner(folder) is None and (folder / LOCK_FILE).is_file()


def test_live_holder_refused_even_forced_then_waited_for(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(
            LockError, match=rf"in use by difaug export \(pid {holder.pid} on host .*Wait for it"
        ):
            FolderLock(tmp_path, command="difaug export").acquire()
        with pytest.raises(LockError, match=rf"pid {holder.pid}"):  # a live process of this host
            FolderLock(tmp_path, command="difaug export", force=True).acquire()
        waited: list[LockOwner | None] = []

        def on_wait(owner: LockOwner | None) -> None:
            waited.append(owner)
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()

        with FolderLock(tmp_path, command="difaug export", on_wait=on_wait) as lock:
            assert [o.pid for o in waited if o] == [holder.pid]
            assert lock.took_over is None  # released cleanly: nothing to take over
    finally:
        holder.kill()
        holder.wait()


def test_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    left = lock_owner(tmp_path)
    assert left is not None and left.pid == holder.pid
    with FolderLock(tmp_path, command="difaug generate") as lock:
        assert lock.took_over == left
        owner = lock_owner(tmp_path)
        assert owner is not None and owner.pid == os.getpid()


def test_other_hosts_record_refused_unless_forced(tmp_path: Path) -> None:
    record = {"host": "gpu-node-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(
        LockError, match=r"left by another difaug command \(pid 4242 on host gpu-node-7.*--force-unlock"
    ):
        FolderLock(tmp_path, command="difaug generate").acquire()
    with FolderLock(tmp_path, command="difaug generate", force=True) as lock:
        assert lock.took_over is not None and lock.took_over.host == "gpu-node-7"


def test_a_held_lock_is_waited_for_in_process(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, command="difaug export").acquire()
    got = threading.Event()

    def second() -> None:
        with FolderLock(tmp_path, command="difaug export", on_wait=lambda owner: None):
            got.set()

    t = threading.Thread(target=second)
    t.start()
    assert not got.wait(0.3)  # blocked while the first holds it
    first.release()
    t.join(10)
    assert got.is_set()


def test_a_file_in_the_way_is_the_os_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(OSError) as e:
        FolderLock(tmp_path / "notes.txt" / "run", command="difaug generate").acquire()
    assert "notes.txt" in str(e.value.filename)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_wait_message_names_the_holder_and_the_folder(tmp_path: Path) -> None:
    owner = LockOwner("gpu-node-7", 4242, "2026-01-01T00:00:00+00:00", "difaug export")
    assert wait_message(tmp_path, owner) == (
        f"waiting for difaug export (pid 4242 on host gpu-node-7, started 2026-01-01T00:00:00+00:00) "
        f"to finish with {tmp_path} …"
    )
    assert wait_message(tmp_path, None) == f"waiting for another export to finish with {tmp_path} …"


def test_a_live_pid_that_holds_no_lock_is_taken_over_with_the_real_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive, no lock
    try:
        record = {"host": fsio.HOST, "pid": other.pid, "started": "2026-01-01T00:00:00+00:00"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        with caplog.at_level("WARNING"), FolderLock(tmp_path, command="difaug generate") as lock:
            assert lock.took_over is not None and lock.took_over.pid == other.pid
            assert f"pid {other.pid} is alive but holds no lock" in lock.took_over_note
            assert "no longer running" not in lock.took_over_note
        assert [r.getMessage().count("took over") for r in caplog.records] == [1]  # said once
        caplog.clear()
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        with FolderLock(tmp_path, command="difaug generate", log_takeover=False) as lock:
            assert lock.took_over_note  # the caller reports it: nothing logged here
        assert caplog.records == []
    finally:
        other.kill()
        other.wait()


def test_each_verb_gets_its_own_hint_for_a_busy_folder(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(LockError) as score:
            FolderLock(tmp_path, command="difaug score", busy_hint="Wait for it to finish.").acquire()
        assert str(score.value).endswith("Wait for it to finish.") and "--out" not in str(score.value)
        with pytest.raises(LockError, match=r"or use another --out\.$"):
            FolderLock(tmp_path, command="difaug generate").acquire()
    finally:
        holder.kill()
        holder.wait()
