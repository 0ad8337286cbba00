"""The run directory's owner: records, the lock, verified shards, owned names, portable plans.

Every case breaks a real run directory the way a user (or a crash, or a second run) would, then
checks the message names the file and the fix, and that no row is lost or duplicated: `inspect`
(`report.summarise`) and `summary.json` agree with the rows actually in the shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from _runner_helpers import all_keys, job, make_dataset, make_sample, sleep_factory, write_csv

from difaug.core.config import resolve_job
from difaug.inputs.manifest import read_manifest
from difaug.report import data as report
from difaug.run import rundir, shards
from difaug.run.driver import run
from difaug.run.plan import PlanError
from difaug.run.rundir import Failure, LockError, RunDirError

REPO = Path(__file__).resolve().parents[1]
ROWS = 5  # make_dataset(…, 5) with shards of 2: shards 00000 [1,3), 00001 [3,5), 00002 [5,6)


def _keys(out: Path) -> list[str]:
    """Keys of the rows in every shard file on disk (verified or not)."""
    return [
        k
        for p in sorted((out / "shards").glob("[0-9]*.parquet"))
        for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()
    ]


def _reconciled(out: Path, rows: int = ROWS, num_aux: int = 2) -> None:
    """No row lost, none duplicated; inspect and summary.json agree with the shards."""
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == rows * num_aux
    assert sorted(keys) == sorted(_keys(out))  # every file on disk is a verified one
    rep = report.summarise(out)
    assert rep.rows == rows * num_aux and rep.samples == rows and not rep.invalid_shards
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["done"] + summary["failed"] + summary["skipped"] + summary["not_run"] == rows
    assert summary["ok"] and summary["all_failures"] == []


def _done_run(tmp_path: Path) -> tuple[Path, Any]:
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    j = job(m, out)
    assert run(j, generator_factory=sleep_factory()).ok
    return out, j


def _inspect(out: Path) -> Any:
    from typer.testing import CliRunner

    from difaug.cli import app

    return CliRunner().invoke(app, ["inspect", str(out)], terminal_width=300)


# ----------------------------------------------------------------------------- records


def test_records_round_trip_through_json(tmp_path: Path) -> None:
    out, _ = _done_run(tmp_path)
    plan = rundir.read_plan(out)
    assert rundir.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.plan_hash == plan.compute_hash()
    assert plan.manifest.folder == str((tmp_path / "d").resolve())
    assert "as written" in plan.manifest.fingerprinted
    stats = rundir.read_marker(out, 1)
    assert rundir.ShardStats.from_dict(stats.to_dict()) == stats
    # Stage seconds only in `seconds` (they may be summed); the task's totals in their own fields.
    assert not {"load", "total", "cpu"} & set(stats.seconds) and stats.wall_seconds and stats.cpu_seconds
    assert (stats.rows, stats.done, stats.images, stats.file.rows) == ((3, 5), 2, 4, 4)
    assert stats.file.bytes == rundir.shard_path(out, 1).stat().st_size
    f = Failure(3, "s", "read", "bad", "00001")
    assert Failure.from_dict(f.to_dict()) == f
    summary = rundir.read_summary(out)
    assert summary is not None and summary.done == ROWS and summary.ok


def test_corrupt_plan_is_a_clear_error_everywhere(tmp_path: Path) -> None:
    out, j = _done_run(tmp_path)
    (out / rundir.PLAN_FILE).write_text('{"version": 2, "config": ')
    with pytest.raises(PlanError, match=r"difaug\.json is unreadable.*--overwrite"):
        run(j, generator_factory=sleep_factory())
    res = _inspect(out)
    assert res.exit_code == 2 and "difaug.json" in res.output and "Traceback" not in res.output
    (out / rundir.PLAN_FILE).write_text('{"version": 2}')
    with pytest.raises(RunDirError, match=r"difaug\.json is not a difaug plan \(missing field 'manifest'\)"):
        rundir.read_plan(out)
    assert run(replace(j, overwrite=True), generator_factory=sleep_factory()).done == ROWS
    _reconciled(out)


# ----------------------------------------------------------------------------- verified shards


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:  # truncate -s 50%
        fh.truncate(path.stat().st_size // 2)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55
    path.write_bytes(bytes(data))


def _edit_marker(out: Path, index: int, **changes: Any) -> None:
    path = rundir.marker_path(out, index)
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


BREAKAGES = {
    "truncated": (lambda out: _truncate(rundir.shard_path(out, 1)), r"00001\.parquet: \d+ bytes, its marker"),
    "flipped bytes": (lambda out: _flip(rundir.shard_path(out, 1)), r"00001\.parquet: sha256 differs"),
    "shard deleted": (lambda out: rundir.shard_path(out, 1).unlink(), r"00001\.parquet is missing"),
    "corrupt marker": (
        lambda out: rundir.marker_path(out, 1).write_text("{not json"),
        r"00001\.json is unreadable",
    ),
    "foreign marker": (
        lambda out: _edit_marker(out, 1, plan_hash="f" * 64),
        r"00001\.json: marker of another plan",
    ),
    "marker without done": (
        lambda out: _edit_marker(out, 1, done=None),
        r"00001\.json: not a valid shard marker \(missing field 'done'\)",
    ),
    "inconsistent counts": (
        lambda out: _edit_marker(out, 1, done=1),
        r"00001\.json: inconsistent marker \(done 1 \+ failed 0 != 2 rows",
    ),
    "old marker": (lambda out: _edit_marker(out, 1, version=1), r"older difaug"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_broken_shard_is_named_then_redone(tmp_path: Path, case: str) -> None:
    out, j = _done_run(tmp_path)
    before = {i: rundir.shard_path(out, i).read_bytes() for i in (0, 2)}
    break_it, reason = BREAKAGES[case]
    break_it(out)

    check = rundir.verify_run(out)

    assert [c.shard.name for c in check.invalid] == ["00001"]
    assert [c.shard.index for c in check.done] == [0, 2]

    assert re.search(reason, check.invalid[0].reason), check.invalid[0].reason
    # Readers see only verified shards: no half shard, no foreign rows.
    assert sorted(all_keys(out)) == sorted(
        k for k in all_keys(out) if not k.startswith(("img00002", "img00003"))
    )
    rep = report.summarise(out)
    assert rep.rows == 6 and rep.shards_done == 2 and "00001" in rep.invalid_shards
    assert "rerun the same `difaug generate` command" in rep.fix
    res = _inspect(out)
    assert res.exit_code == 0 and "1 invalid shard(s)" in res.output and "00001" in res.output
    assert "fix: rerun" in res.output

    # generate redoes exactly that shard and says so; the others are not touched.
    from rich.console import Console

    from difaug.cli._progress import GenerateView

    console = Console(record=True, width=300)
    s = run(j, generator_factory=sleep_factory(), on_event=GenerateView(console, bar=False))
    assert "1 shard(s) were invalid and are redone: 00001" in console.export_text()
    assert (s.done, s.skipped, s.shards_done, list(s.redone_shards)) == (2, 3, 1, ["00001"])
    assert {i: rundir.shard_path(out, i).read_bytes() for i in (0, 2)} == before
    _reconciled(out)


def test_verification_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = _done_run(tmp_path)
    rundir._SHA_CACHE.clear()
    opened: list[str] = []
    real = rundir.hashlib.file_digest
    monkeypatch.setattr(
        rundir.hashlib, "file_digest", lambda fh, algo: opened.append(fh.name) or real(fh, algo)
    )
    for _ in range(3):
        assert len(rundir.verify_run(out).done) == 3
    assert len(opened) == 3  # one hash per shard, then (size, mtime, inode) hits
    _flip(rundir.shard_path(out, 0))  # a rewrite changes mtime: hashed again, and caught
    assert [c.shard.index for c in rundir.verify_run(out).invalid] == [0]


def test_rewritten_shard_is_vouched_for_by_rewrite_marker(tmp_path: Path) -> None:
    """A verb that rewrites a finished shard (scores added) records the new file in the marker."""
    out, _ = _done_run(tmp_path)
    stats = rundir.read_marker(out, 0)
    rows = shards.read_shard(rundir.shard_path(out, 0)).to_pylist()
    for r in rows:
        r["drift_iou"], r["drift_segments"] = 0.5, 3
    shards.write_shard(rundir.shard_path(out, 0), rows)
    assert [c.shard.index for c in rundir.verify_run(out).invalid] == [0]
    rundir.rewrite_marker(out, stats)
    assert len(rundir.verify_run(out).done) == 3
    scores = shards.read_shard(rundir.shard_path(out, 0), ["drift_segments"]).column(0).to_pylist()
    assert set(scores) == {3}


# ----------------------------------------------------------------------------- the lock

_HOLD = textwrap.dedent(
    """
    import sys, time
    from difaug.run.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
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
        assert not (out / rundir.PLAN_FILE).exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert rundir.lock_owner(out).pid == holder.pid  # the dead process's record stays…
    from rich.console import Console

    from difaug.cli._progress import GenerateView

    console = Console(record=True, width=300)
    assert run(job(m, out), generator_factory=sleep_factory(), on_event=GenerateView(console, bar=False)).ok
    assert f"took over the lock of {out} left by pid {holder.pid}" in console.export_text()
    assert rundir.lock_owner(out) is None  # …a clean exit leaves none
    _reconciled(out)


def test_other_hosts_lock_refused_unless_forced(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    out.mkdir()
    owner = {"host": "gpu-node-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00"}
    (out / rundir.LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(LockError, match=r"pid 4242 on host gpu-node-7.*--force-unlock"):
        run(job(m, out), generator_factory=sleep_factory())
    assert run(job(m, out), generator_factory=sleep_factory(), force_unlock=True).ok
    _reconciled(out)


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
        while rundir.lock_owner(out) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rundir.lock_owner(out) is not None, first.stdout.read() if first.stdout else ""
        for second in (job(m, out), replace(job(m, out, num_aux=3, resolution=128), overwrite=True)):
            with pytest.raises(LockError, match=rf"pid {first.pid}"):
                run(second, generator_factory=sleep_factory())
        assert first.wait(timeout=120) == 0, first.stdout.read() if first.stdout else ""
    finally:
        if first.poll() is None:
            first.kill()
    _reconciled(out)
    assert rundir.read_plan(out).num_aux == 2


# ----------------------------------------------------------------------------- owned names


def test_overwrite_and_cleanup_touch_only_difaugs_files(tmp_path: Path) -> None:
    out, j = _done_run(tmp_path)
    mine = {
        out / "notes.txt": b"my notes",
        out / "notes.tmp-backup": b"a backup",
        out / "shards" / "README.md": b"about these shards",
        out / "shards" / "00001.parquet.tmp-keep": b"not difaug's pattern",
        out / "stats" / "plot.json": b"{}",
    }
    for p, data in mine.items():
        p.write_bytes(data)
    dead_tmp = out / "shards" / f".00001.parquet.difaug-tmp-{rundir._HOST}-999999999-0000aaaa"
    dead_tmp.write_bytes(b"x")
    assert rundir.remove_temp_files(out) == 1 and not dead_tmp.exists()
    s = run(replace(job(j.manifest, out, num_aux=3), overwrite=True), generator_factory=sleep_factory())
    assert s.done == ROWS and s.skipped == 0
    assert {p: p.read_bytes() for p in mine} == mine
    _reconciled(out, num_aux=3)


def test_temp_files_of_live_or_recent_foreign_writers_stay(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    host = rundir._HOST
    dead = d / f".00001.parquet.difaug-tmp-{host}-999999999-0000aaaa"
    live = d / f".00002.parquet.difaug-tmp-{host}-{os.getppid()}-0000bbbb"
    foreign = d / ".00003.parquet.difaug-tmp-othernode-1-0000cccc"  # pid means nothing here
    stale = d / ".00004.parquet.difaug-tmp-othernode-2-0000dddd"
    for f in (dead, live, foreign, stale):
        f.write_bytes(b"x")
    os.utime(stale, (time.time() - 7 * 3600,) * 2)
    assert rundir.remove_temp_files(tmp_path) == 2
    assert not dead.exists() and live.exists() and foreign.exists() and not stale.exists()


def test_temp_names_are_unique_and_match_the_pattern(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")

    for _ in range(2):
        rundir.atomic_write(tmp_path / "00000.parquet", write)
    assert len(set(seen)) == 2 and all(rundir.TEMP_NAME.match(n) for n in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet"]


# ----------------------------------------------------------------------------- portable plans


def test_moved_data_and_manifest_resume(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "a" / "d", ROWS)
    out = tmp_path / "out"
    run(job(m, out), generator_factory=sleep_factory())
    rundir.marker_path(out, 2).unlink()  # one shard still to do after the move
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "d" / "manifest.csv"
    s = run(job(moved, out), generator_factory=sleep_factory())
    assert (s.skipped, s.done) == (4, 1) and s.ok
    plan = rundir.read_plan(out)  # the plan says where the manifest is now; same hash
    assert (plan.manifest.path, plan.manifest.folder) == (str(moved), str(moved.parent.resolve()))
    _reconciled(out)
    # Changed content (not location) is still another job.
    write_csv(moved, [make_sample(tmp_path / "b" / "d", i) for i in range(ROWS)][::-1])
    with pytest.raises(PlanError, match="manifest differs"):
        run(job(moved, out), generator_factory=sleep_factory())


def test_relative_model_stored_absolute_and_checked_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    for where in ("a", "b"):
        (tmp_path / where / "models" / "tiny").mkdir(parents=True)
    settings = {"manifest": str(m), "out": str(out), "condition": "seg", "cluster": "sync", "progress": False}
    monkeypatch.chdir(tmp_path / "a")
    j = resolve_job(model="models/tiny", hed_weights="hub-org/hed", **settings)
    assert j.config.model == str((tmp_path / "a" / "models" / "tiny").resolve())
    assert j.config.hed_weights == "hub-org/hed"  # a hub id stays as written
    assert run(j, generator_factory=sleep_factory()).ok
    assert rundir.read_plan(out).config["model"] == j.config.model
    monkeypatch.chdir(tmp_path / "b")  # the same words, another folder: another model, refused
    with pytest.raises(PlanError, match=r"config differs in model .*/a/models/tiny.*/b/models/tiny"):
        run(
            resolve_job(model="models/tiny", hed_weights="hub-org/hed", **settings),
            generator_factory=sleep_factory(),
        )
    j2 = resolve_job(model=str(tmp_path / "a" / "models" / "tiny"), hed_weights="hub-org/hed", **settings)
    assert run(j2, generator_factory=sleep_factory()).skipped == ROWS  # same model by absolute path
    _reconciled(out, num_aux=j.config.num_aux)


# ----------------------------------------------------------------------------- row isolation


def test_huge_fold_is_stored_and_unstorable_values_name_their_row(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    rows = [make_sample(folder, i) for i in range(4)]
    rows[1]["fold"], rows[2]["fold"] = 3_000_000_000, 2**70
    path = folder / "manifest.csv"
    import csv

    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "mask", "class_id", "class_name", "fold"])
        w.writeheader()
        w.writerows(rows)
    manifest = read_manifest(path)
    assert [(p.row, p.column) for p in manifest.problems] == [(3, "fold")]
    assert "does not fit a 64-bit integer" in manifest.problems[0].reason
    out = tmp_path / "out"
    s = run(job(path, out), generator_factory=sleep_factory())
    assert (s.done, s.failed) == (3, 1)  # the good rows of shard 00001 are not taken down with row 3
    assert [(f.row, f.stage) for f in s.failures] == [(3, "manifest")]
    folds = {
        r["sample_id"]: r["fold"]
        for p in shards.iter_shard_paths(out)
        for r in shards.read_shard(p, ["sample_id", "fold"]).to_pylist()
    }
    assert folds["img00001_8"] == 3_000_000_000
    rep = report.summarise(out)
    assert rep.samples == 3 and [f.row for f in rep.failures] == [3]


# ----------------------------------------------------------------------------- OUT that cannot be written


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
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["done"] + summary["failed"] + summary["not_run"] == rows
    (out / "stats").unlink()  # the user fixes OUT and reruns the same command
    s2 = run(job(m, out), generator_factory=sleep_factory())
    assert s2.ok and s2.done == rows  # stats/ was lost, so every shard is redone, none duplicated
    _reconciled(out, rows)


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
    out, j = _done_run(tmp_path)
    (out / rundir.SUMMARY_FILE).unlink()
    (out / rundir.SUMMARY_FILE).mkdir()  # a folder in the way: os.replace fails
    s = run(j, generator_factory=sleep_factory())
    assert "summary not written" in s.stopped and "summary.json" in s.stopped and not s.ok
    assert s.skipped == ROWS
