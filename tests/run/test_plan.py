"""The plan: rows cut into shards before any model loads; the same plan resumes, another is refused.

Real run directories (the SleepGenerator stands in for the model: only the bookkeeping is under
test), so every refusal is checked against what a user would have on disk."""

from __future__ import annotations

import functools
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _rundirs import ROWS, reconciled
from _runner_helpers import (
    all_keys,
    job,
    make_dataset,
    make_sample,
    sleep_factory,
    verified_shards,
    verified_stats,
    write_csv,
)

from difaug.core.config import JobConfig, RuntimeConfig, resolve_job
from difaug.inputs.manifest import read_manifest
from difaug.report import data as report
from difaug.run import layout, shards
from difaug.run.driver import run
from difaug.run.plan import PlanError, build_plan, differences, manifest_fingerprint
from difaug.run.records import ShardStats


def _stats(out: Path) -> dict[int, ShardStats]:
    return {s.shard: s for s in verified_stats(out)}


def test_plan_cuts_rows_into_shards(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 7)
    j = job(m, tmp_path / "out", shard_size=3)
    p = build_plan(j, read_manifest(m))
    assert [(s.start, s.stop) for s in p.shards] == [(1, 4), (4, 7), (7, 8)]
    assert p.rows == 7 and p.manifest.rows == 7
    assert p.config == {**JobConfig().__dict__, **p.config}  # the full JobConfig, flat
    limited = build_plan(replace(j, limit=5), read_manifest(m))
    assert [(s.start, s.stop) for s in limited.shards] == [(1, 4), (4, 6)]
    assert limited.plan_hash != p.plan_hash
    assert differences(p, limited) == ["limit 0 → 5"]
    assert differences(p, build_plan(j, read_manifest(m))) == []


def _plan_must_exist(cfg: JobConfig, runtime: RuntimeConfig, *, out: str, ms: float = 1.0) -> Any:
    # The plan is on disk before any model loads.
    assert layout.plan_path(out).is_file()
    from difaug.testing.standins import SleepGenerator

    return SleepGenerator(ms, runtime.batch_size)


def test_sync_run_resume_and_summary(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 5)
    out = tmp_path / "out"
    j = job(m, out)
    s = run(j, generator_factory=functools.partial(_plan_must_exist, out=str(out)))
    assert (s.rows, s.done, s.failed, s.skipped, s.images) == (5, 5, 0, 0, 10)
    assert s.ok
    plan = layout.read_plan(out)
    assert plan.manifest.fingerprint == manifest_fingerprint(read_manifest(m))
    assert len(plan.shards) == 3
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]
    before = _stats(out)
    # Lose shard 1's marker: a rerun redoes exactly that shard, the others keep their markers.
    layout.marker_path(out, 1).unlink()
    s2 = run(j, generator_factory=sleep_factory())
    assert (s2.done, s2.skipped, s2.shards_done, s2.shards_skipped) == (2, 3, 1, 2)
    after = _stats(out)
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1].finished != before[1].finished
    summary = layout.read_summary(out)
    assert summary is not None and summary.done + summary.failed + summary.skipped == summary.rows == 5


def test_changed_manifest_or_config_refused_overwrite_works(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 3)
    out = tmp_path / "out"
    run(job(m, out), generator_factory=sleep_factory())
    rows = [make_sample(tmp_path / "d", i) for i in range(4)]
    m2 = write_csv(tmp_path / "d" / "other.csv", rows)
    with pytest.raises(PlanError, match=r"manifest differs.*3 rows.*4 rows"):
        run(job(m2, out), generator_factory=sleep_factory())
    with pytest.raises(PlanError, match=r"config differs in num_aux \(2 → 3\), seed \(0 → 7\)"):
        run(job(m, out, num_aux=3, seed=7), generator_factory=sleep_factory())
    with pytest.raises(PlanError, match=r"limit 0 → 2"):
        run(job(m, out, limit=2), generator_factory=sleep_factory())
    assert len(all_keys(out)) == 6  # nothing was touched
    s = run(replace(job(m2, out, num_aux=3), overwrite=True), generator_factory=sleep_factory())
    assert s.done == 4 and len(all_keys(out)) == 12
    assert layout.read_plan(out).num_aux == 3


def test_a_plan_from_before_a_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    """A plan written by an earlier difaug lacks the settings added since (here `cache_interval`
    and `preset`). At their defaults it is the same job: the run resumes it as it is (its config,
    its hash, which its markers name) and a rerun keeps every shard. Set otherwise, it is refused
    naming the setting."""
    import hashlib
    import json

    m = make_dataset(tmp_path / "d", 4)
    out = tmp_path / "out"
    plan = build_plan(job(m, out), read_manifest(m))
    earlier = {k: v for k, v in plan.config.items() if k not in ("cache_interval", "preset")}
    fingerprint = hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()
    old = replace(plan, config=earlier, config_fingerprint=fingerprint, plan_hash="")
    assert old.damage() == "" and old.plan_hash != plan.plan_hash
    out.mkdir()
    layout.write_plan(out, old)

    assert differences(old, plan) == []
    first = run(job(m, out), generator_factory=sleep_factory())
    assert first.ok and first.done == 4
    kept = layout.read_plan(out)
    assert kept.plan_hash == old.plan_hash and "cache_interval" not in kept.config
    again = run(job(m, out), generator_factory=sleep_factory())
    assert again.skipped == 4 and again.done == 0
    with pytest.raises(PlanError, match=r"config differs in cache_interval \(not in the plan → 2\)"):
        run(job(m, out, cache_interval=2), generator_factory=sleep_factory())


def test_runtime_may_change_on_resume(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 4)
    out = tmp_path / "out"
    run(job(m, out), generator_factory=sleep_factory())
    s = run(job(m, out, runtime={"batch_size": 1, "retries": 0}), generator_factory=sleep_factory())
    assert s.skipped == 4 and s.ok


def test_shards_without_plan_refused(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "00000.parquet").write_bytes(b"x")
    with pytest.raises(PlanError, match=r"no difaug\.json"):
        run(job(m, out), generator_factory=sleep_factory())


# ----------------------------------------------------------------------------- portable plans


def test_moved_data_and_manifest_resume(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "a" / "d", ROWS)
    out = tmp_path / "out"
    run(job(m, out), generator_factory=sleep_factory())
    layout.marker_path(out, 2).unlink()  # one shard still to do after the move
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "d" / "manifest.csv"
    s = run(job(moved, out), generator_factory=sleep_factory())
    assert (s.skipped, s.done) == (4, 1) and s.ok
    plan = layout.read_plan(out)  # the plan says where the manifest is now; same hash
    assert (plan.manifest.path, plan.manifest.folder) == (str(moved), str(moved.parent.resolve()))
    reconciled(out)
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
    assert layout.read_plan(out).config["model"] == j.config.model
    monkeypatch.chdir(tmp_path / "b")  # the same words, another folder: another model, refused
    with pytest.raises(PlanError, match=r"config differs in model .*/a/models/tiny.*/b/models/tiny"):
        run(
            resolve_job(model="models/tiny", hed_weights="hub-org/hed", **settings),
            generator_factory=sleep_factory(),
        )
    j2 = resolve_job(model=str(tmp_path / "a" / "models" / "tiny"), hed_weights="hub-org/hed", **settings)
    assert run(j2, generator_factory=sleep_factory()).skipped == ROWS  # same model by absolute path
    reconciled(out, num_aux=j.config.num_aux)


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
        for p in verified_shards(out)
        for r in shards.read_shard(p, ["sample_id", "fold"]).to_pylist()
    }
    assert folds["img00001_8"] == 3_000_000_000
    rep = report.summarise(out)
    assert rep.samples == 3 and [f.row for f in rep.failures] == [3]
