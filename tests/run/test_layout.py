"""The run directory's layout: owned names only are deleted, writes are atomic, OUT that cannot be
written stops the run with one line, and one `difaug generate` at a time holds OUT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _rundirs import ROWS, done_run, reconciled
from _runner_helpers import job, make_dataset, sleep_factory

from difaug.core import fsio
from difaug.core.folderlock import LOCK_FILE, LockError, lock_owner
from difaug.run import layout
from difaug.run.driver import run

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- owned names


def test_overwrite_and_cleanup_touch_only_difaugs_files(tmp_path: Path) -> None:
    out, j = done_run(tmp_path)
    mine = {
        out / "notes.txt": b"my notes",
        out / "notes.tmp-backup": b"a backup",
        out / "shards" / "README.md": b"about these shards",
        out / "shards" / "00001.parquet.tmp-keep": b"not difaug's pattern",
        out / "stats" / "plot.json": b"{}",
    }
    for p, data in mine.items():
        p.write_bytes(data)
    dead_tmp = out / "shards" / f".00001.parquet.difaug-tmp-{fsio.HOST}-999999999-0000aaaa"
    dead_tmp.write_bytes(b"x")
    assert layout.remove_temp_files(out) == 1 and not dead_tmp.exists()
    s = run(replace(job(j.manifest, out, num_aux=3), overwrite=True), generator_factory=sleep_factory())
    assert s.done == ROWS and s.skipped == 0
    assert {p: p.read_bytes() for p in mine} == mine
    reconciled(out, num_aux=3)


def test_clear_run_leaves_folders_holding_a_users_file(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    (out / "stats" / "plot.json").write_bytes(b"{}")
    assert layout.has_run_files(out)
    assert layout.clear_run(out) == 2 + 3 + 3  # plan, summary, three shards, three markers
    assert not layout.has_run_files(out) and not (out / "shards").exists()
    assert sorted(p.name for p in (out / "stats").iterdir()) == ["plot.json"]


def test_temp_files_of_live_or_recent_foreign_writers_stay(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    host = fsio.HOST
    dead = d / f".00001.parquet.difaug-tmp-{host}-999999999-0000aaaa"
    live = d / f".00002.parquet.difaug-tmp-{host}-{os.getppid()}-0000bbbb"
    foreign = d / ".00003.parquet.difaug-tmp-othernode-1-0000cccc"  # pid means nothing here
    stale = d / ".00004.parquet.difaug-tmp-othernode-2-0000dddd"
    for f in (dead, live, foreign, stale):
        f.write_bytes(b"x")
    os.utime(stale, (time.time() - 7 * 3600,) * 2)
    assert layout.remove_temp_files(tmp_path) == 2
    assert not dead.exists() and live.exists() and foreign.exists() and not stale.exists()


def test_temp_names_are_unique_and_match_the_pattern(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")

    for _ in range(2):
        layout.atomic_write(tmp_path / "00000.parquet", write)
    assert len(set(seen)) == 2 and all(fsio.TEMP_NAME.match(n) for n in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet"]


def test_a_killed_write_probe_is_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe has difaug's temp name: one left by a process killed mid-probe goes with the
    next cleanup, like any temp file of a dead writer."""
    left: list[Path] = []
    real_unlink = Path.unlink

    def killed_before_unlink(self: Path, missing_ok: bool = False) -> None:
        if ".probe.difaug-tmp-" in self.name:
            left.append(self)
            return
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_before_unlink)
    layout.probe_writable(tmp_path)
    monkeypatch.undo()
    assert len(left) == 2 and all(p.exists() and fsio.TEMP_NAME.match(p.name) for p in left)
    dead = [p.rename(p.with_name(p.name.replace(f"-{os.getpid()}-", "-999999999-"))) for p in left]
    assert layout.remove_temp_files(tmp_path) == 2 and not any(p.exists() for p in dead)


# ----------------------------------------------------------------------------- OUT that cannot be written


def test_probe_names_the_folder_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "stats").write_text("a file where the markers folder goes")
    with pytest.raises(
        layout.OutputError, match=r"cannot use .*stats.*not a folder.*finished shards are kept"
    ):
        layout.probe_writable(tmp_path)
    assert layout.is_permanent(OSError(30, "Read-only file system")) and not layout.is_permanent(
        OSError(4, "EINTR")
    )


class _Saboteur:
    """The sleep generator, except that on its first batch of sample `at` it puts a file where
    OUT/stats should be: the marker write then fails with a real not-a-directory error."""

    def __init__(self, out: str, at: str, batch_size: int) -> None:
        from difaug.testing.standins import SleepGenerator

        self.inner = SleepGenerator(1.0, batch_size)
        self.batch_size, self.provenance, self.out, self.at = batch_size, self.inner.provenance, Path(out), at

    def generate(self, items: list[Any]) -> list[Any]:
        if any(it.sample_id == self.at for it in items) and (self.out / "stats").is_dir():
            shutil.rmtree(self.out / "stats")
            (self.out / "stats").write_text("in the way")
        return self.inner.generate(items)


def _saboteur_factory(cfg: Any, runtime: Any, *, out: str, at: str) -> _Saboteur:
    return _Saboteur(out, at, runtime.batch_size)


def test_unwritable_out_stops_the_run_with_one_clear_line(tmp_path: Path) -> None:
    import functools

    rows = 9  # shards 00000 … 00004
    m = make_dataset(tmp_path / "d", rows)
    out = tmp_path / "out"
    s = run(
        job(m, out), generator_factory=functools.partial(_saboteur_factory, out=str(out), at="img00002_12")
    )
    # 00001 fails (no retry: it cannot go away). Two shards are in flight at a time: 00000 fails
    # too if its marker was not written yet, 00002 if it was started before 00001 failed; after
    # that no shard starts, so 00003 and 00004 (rows 7-9) never run.
    assert 1 in s.failed_shards and set(s.failed_shards) <= {0, 1, 2}
    assert s.done == (0 if 0 in s.failed_shards else 2) and s.not_run >= 3
    assert s.failed == 2 * len(s.failed_shards) and s.done + s.failed + s.not_run == rows
    assert all("cannot use" in f.reason for f in s.failures)
    assert "cannot use" in s.stopped and "stats" in s.stopped and "not a folder" in s.stopped
    assert not s.ok
    summary = layout.read_summary(out)
    assert summary is not None and summary.done + summary.failed + summary.not_run == rows
    (out / "stats").unlink()  # the user fixes OUT and reruns the same command
    s2 = run(job(m, out), generator_factory=sleep_factory())
    assert s2.ok and s2.done == rows  # stats/ was lost, so every shard is redone, none duplicated
    reconciled(out, rows)


def test_cli_exit_2_when_nothing_can_be_written(tmp_path: Path, tiny_models: Path) -> None:
    from typer.testing import CliRunner

    from difaug.cli import app

    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "shards").write_text("a file where the shards folder goes")
    args = ["generate", "--manifest", str(m), "--out", str(out), "--model", str(tiny_models)]
    args += ["--condition", "seg", "--resolution", "64", "--steps", "1", "--cluster", "sync", "--no-progress"]
    res = CliRunner().invoke(app, args, terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "cannot use" in res.output and "shards" in res.output and "Traceback" not in res.output
    assert (out / "shards").read_text().startswith("a file")  # a user's file is never removed


def test_summary_that_cannot_be_written_is_reported_not_raised(tmp_path: Path) -> None:
    out, j = done_run(tmp_path)
    layout.summary_path(out).unlink()
    layout.summary_path(out).mkdir()  # a folder in the way: os.replace fails
    s = run(j, generator_factory=sleep_factory())
    assert "summary not written" in s.stopped and "summary.json" in s.stopped and not s.ok
    assert s.skipped == ROWS


# ----------------------------------------------------------------------------- one generate per OUT

_HOLD = textwrap.dedent(
    """
    import sys, time
    from difaug.core.folderlock import FolderLock
    lock = FolderLock(sys.argv[1], command="difaug generate").acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _hold_lock(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_live_lock_refuses_dead_lock_is_taken_over(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        with pytest.raises(
            LockError, match=rf"in use by difaug generate \(pid {holder.pid} on host .*, started"
        ):
            run(replace(job(m, out), overwrite=True), generator_factory=sleep_factory())
        with pytest.raises(LockError, match=rf"pid {holder.pid}.*Wait for it"):  # not even forced
            run(job(m, out), generator_factory=sleep_factory(), force_unlock=True)
        assert not layout.plan_path(out).exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    owner = lock_owner(out)
    assert owner is not None and owner.pid == holder.pid  # the dead process's record stays…
    from rich.console import Console

    from difaug.cli._progress import GenerateView

    console = Console(record=True, width=300)
    assert run(job(m, out), generator_factory=sleep_factory(), on_event=GenerateView(console, bar=False)).ok
    assert f"took over the lock of {out} left by pid {holder.pid}" in console.export_text()
    assert lock_owner(out) is None  # …a clean exit leaves none
    reconciled(out)


def test_other_hosts_lock_refused_unless_forced(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    out.mkdir()
    owner = {"host": "gpu-node-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00"}
    (out / LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(LockError, match=r"pid 4242 on host gpu-node-7.*--force-unlock"):
        run(job(m, out), generator_factory=sleep_factory())
    assert run(job(m, out), generator_factory=sleep_factory(), force_unlock=True).ok
    reconciled(out)


_SLOW_RUN = textwrap.dedent(
    """
    import sys, functools
    sys.path.insert(0, sys.argv[3])
    from _runner_helpers import job
    from difaug.run.driver import run
    from difaug.testing.standins import sleep_generator_factory
    s = run(job(sys.argv[1], sys.argv[2]), generator_factory=functools.partial(sleep_generator_factory, ms_per_image=150))
    sys.exit(0 if s.ok else 1)
    """
)


def test_concurrent_runs_cannot_mix_or_delete_work(tmp_path: Path) -> None:
    """A real second `difaug` run on the same OUT: refused while the first holds it (with or without
    --overwrite, with another config); the first finishes whole."""
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, str(m), str(out), str(REPO / "tests")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while lock_owner(out) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock_owner(out) is not None, first.stdout.read() if first.stdout else ""
        for second in (job(m, out), replace(job(m, out, num_aux=3, resolution=128), overwrite=True)):
            with pytest.raises(LockError, match=rf"pid {first.pid}"):
                run(second, generator_factory=sleep_factory())
        assert first.wait(timeout=120) == 0, first.stdout.read() if first.stdout else ""
    finally:
        if first.poll() is None:
            first.kill()
    reconciled(out)
    assert layout.read_plan(out).num_aux == 2
