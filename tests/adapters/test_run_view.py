"""`open_run`: a run directory read as its own records — plan, verified markers, key columns, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from _runs import PASCAL_SPECS, make_run

from difaug.adapters.run import KEY_COLUMNS, RunError, open_run
from difaug.run.layout import write_summary
from difaug.run.records import Failure, Plan, ShardStats, Summary


def test_the_view_holds_the_typed_records_of_the_verified_shards(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=2, fail=["2008_000123_7"], unfinished=[2])
    view = open_run(run.run_dir)
    assert isinstance(view.plan, Plan) and view.num_aux == 2 == view.plan.num_aux
    assert all(isinstance(s, ShardStats) for s in view.stats)
    assert [s.shard for s in view.stats] == [0, 1] and [p.stem for p in view.shard_paths] == [
        "00000",
        "00001",
    ]
    assert [s.name for s in view.unfinished_shards()] == ["00002"] and not view.invalid
    assert view.failures == [Failure(4, "2008_000123_7", "read", view.failures[0].reason, "00001")]
    assert view.failure_reasons() == {view.failures[0].reason: 1}
    assert view.keys.num_rows == 2 * 3  # 3 samples with images, X = 2
    assert set(KEY_COLUMNS) | {"_shard", "_group", "_in_group"} == set(view.keys.column_names)


def test_a_changed_shard_is_invalid_with_the_fix(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:4], num_aux=1)
    shard = run.run_dir / "shards" / "00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    view = open_run(run.run_dir)
    assert [c.shard.name for c in view.invalid] == ["00001"] and "bytes" in view.invalid[0].reason
    assert [p.stem for p in view.shard_paths] == ["00000"]
    assert "generate" in view.fix


def test_failures_of_a_shard_that_failed_as_a_whole_come_from_the_summary(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=1, unfinished=[1])
    failed = [Failure(r, run.samples[r - 1].sample_id, "task", "boom") for r in (1, 3)]  # row 1 was redone
    write_summary(run.run_dir, Summary(out=str(run.run_dir), rows=5, shards=3, all_failures=failed))
    view = open_run(run.run_dir)
    assert view.failures == [Failure(3, run.samples[2].sample_id, "task", "boom", "00001")]


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="run directory not found"):
        open_run(tmp_path / "nope")
    with pytest.raises(RunError, match=r"difaug\.json"):
        open_run(tmp_path)
