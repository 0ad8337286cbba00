"""The run directory's records: JSON round trips, and a plan or marker that is not one named clearly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _rundirs import ROWS, done_run, inspect_cli, reconciled
from _runner_helpers import sleep_factory

from difaug.run import layout
from difaug.run.driver import run
from difaug.run.plan import PlanError
from difaug.run.records import Failure, Plan, RunDirError, ShardRange, ShardStats, Summary, cut


def test_records_round_trip_through_json(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    plan = layout.read_plan(out)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.plan_hash == plan.compute_hash()
    assert plan.manifest.folder == str((tmp_path / "d").resolve())
    assert "as written" in plan.manifest.fingerprinted
    stats = layout.read_marker(out, 1)
    assert ShardStats.from_dict(stats.to_dict()) == stats
    # Stage seconds only in `seconds` (they may be summed); the task's totals in their own fields.
    assert not {"load", "total", "cpu"} & set(stats.seconds) and stats.wall_seconds and stats.cpu_seconds
    assert (stats.rows, stats.done, stats.images, stats.file.rows) == ((3, 5), 2, 4, 4)
    assert stats.file.bytes == layout.shard_path(out, 1).stat().st_size
    f = Failure(3, "s", "read", "bad", "00001")
    assert Failure.from_dict(f.to_dict()) == f
    summary = layout.read_summary(out)
    assert summary is not None and summary.done == ROWS and summary.ok
    assert Summary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def test_cut_covers_every_row_once() -> None:
    shards = cut(7, 3)
    assert shards == [ShardRange(0, 1, 4), ShardRange(1, 4, 7), ShardRange(2, 7, 8)]
    assert [r for s in shards for r in range(1, 8) if r in s] == list(range(1, 8))
    assert [len(s) for s in shards] == [3, 3, 1] and shards[2].name == "00002"
    assert cut(0, 3) == []


def test_failure_from_another_version_keeps_what_it_has() -> None:
    assert Failure.from_dict({"row": True, "reason": ""}, "00003") == Failure(
        None, "", "", "unknown", "00003"
    )
    assert Failure.from_dict("disk full") == Failure(None, "", "", "disk full")


def test_plan_hash_ignores_where_the_run_and_manifest_live(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    plan = layout.read_plan(out)
    moved = replace(plan, manifest=replace(plan.manifest, path="/elsewhere/m.csv"), cwd="/x", plan_hash="")
    assert moved.plan_hash == plan.plan_hash
    other = replace(plan, limit=3, plan_hash="")
    assert other.plan_hash != plan.plan_hash


def test_marker_with_inconsistent_counts_refused(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    d = layout.read_marker(out, 0).to_dict()
    with pytest.raises(RunDirError, match=r"inconsistent marker \(images 5 != file rows 4\)"):
        ShardStats.from_dict({**d, "images": 5}, "m.json")
    with pytest.raises(RunDirError, match=r"m\.json: not a valid shard marker \(missing field 'file'\)"):
        ShardStats.from_dict({k: v for k, v in d.items() if k != "file"}, "m.json")


def test_plan_with_shard_gaps_refused(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    d = layout.read_plan(out).to_dict()
    d["shards"] = d["shards"][1:]
    with pytest.raises(RunDirError, match=r"shard indices are not 0\.\.N-1"):
        Plan.from_dict(d)


def test_corrupt_plan_is_a_clear_error_everywhere(tmp_path: Path) -> None:
    out, j = done_run(tmp_path)
    layout.plan_path(out).write_text('{"version": 2, "config": ')
    with pytest.raises(PlanError, match=r"difaug\.json is unreadable.*--overwrite"):
        run(j, generator_factory=sleep_factory())
    res = inspect_cli(out)
    assert res.exit_code == 2 and "difaug.json" in res.output and "Traceback" not in res.output
    layout.plan_path(out).write_text('{"version": 2}')
    with pytest.raises(RunDirError, match=r"difaug\.json is not a difaug plan \(missing field 'manifest'\)"):
        layout.read_plan(out)
    assert run(replace(j, overwrite=True), generator_factory=sleep_factory()).done == ROWS
    reconciled(out)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["shards"][0].update(rows=[1, 99]),  # a row range: the plan hash no longer matches
        lambda d: d["config"].update(num_aux=3),  # X: the config no longer matches its fingerprint
    ],
    ids=["row-range", "num_aux"],
)
def test_hand_edited_plan_is_edited_or_damaged_everywhere(tmp_path: Path, edit: Any) -> None:
    from typer.testing import CliRunner

    from difaug.cli import app

    out, j = done_run(tmp_path)
    plan_file = layout.plan_path(out)
    d = json.loads(plan_file.read_text())
    edit(d)
    plan_file.write_text(json.dumps(d))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="edited or damaged"):
        layout.read_plan(out)
    with pytest.raises(PlanError, match=r"edited or damaged.*--overwrite"):
        run(j, generator_factory=sleep_factory())
    result = inspect_cli(out)
    assert result.exit_code == 2 and "edited or damaged" in result.output and "--overwrite" in result.output
    exported = CliRunner().invoke(
        app, ["export", str(out), "--out", str(tmp_path / "x"), "--layout", "folder"]
    )
    assert exported.exit_code == 2 and "edited or damaged" in exported.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_regeneration_counts_round_trip_and_old_markers_still_parse(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    d = layout.read_marker(out, 0).to_dict()  # 2 samples, 4 images
    counts = {"passed_at": [2, 1, 0], "never_passed": 1, "extra_images": 4, "regenerated": 2}
    stats = ShardStats.from_dict({**d, **counts, "regenerate_seconds": 1.5})
    assert (stats.passed_at, stats.never_passed, stats.regenerate_seconds) == ((2, 1, 0), 1, 1.5)
    assert ShardStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    # A marker written before regeneration existed: no counts, still valid.
    old = {k: v for k, v in d.items() if k not in {*counts, "regenerate_seconds"}}
    assert ShardStats.from_dict(old).passed_at == () and ShardStats.from_dict(old).never_passed == 0
    with pytest.raises(
        RunDirError, match=r"passed at each attempt \[2, 1, 0\] \+ never passed 0 != images 4"
    ):
        ShardStats.from_dict({**d, **counts, "never_passed": 0})
