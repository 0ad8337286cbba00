"""`difaug.report.data`: totals, failures, timings and the job config of a run, as records."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _runs import SyntheticRun, make_run

from difaug.core.config import JobConfig
from difaug.report import data as report


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    # Shards of 2 over 5 rows: shard 1 has a failed row, shard 2 never finished.
    return make_run(tmp_path_factory.mktemp("r"), num_aux=2, fail=["2008_000123_7"], unfinished=[2])


def test_summarise_counts_failures_and_timings(failed_run: SyntheticRun) -> None:
    rep = report.summarise(failed_run.run_dir)
    assert (rep.manifest_rows, rep.rows, rep.samples, rep.num_aux) == (5, 6, 3, 2)
    assert rep.classes == {"aeroplane": 1, "person": 1, "tvmonitor": 1}
    assert (rep.shards_done, rep.shards_planned, rep.unfinished_shards) == (2, 3, ["00002"])
    assert [(f.row, f.sample_id, f.stage, f.shard) for f in rep.failures] == [
        (4, "2008_000123_7", "read", "00001")
    ]
    assert list(rep.failures_by_reason.values()) == [1] and "truncated" in next(iter(rep.failures_by_reason))
    assert rep.failures_by_stage == {"read": 1}
    # _runs markers: generate = 0.5 s per image, total = 1.1 + 0.5 s per image, shard i at 10 i s for 5 s.
    assert rep.device_seconds == pytest.approx(0.5 * 6)
    assert [t.images for t in rep.per_shard] == [4, 2]
    assert [t.shard for t in rep.per_shard] == ["00000", "00001"]
    assert rep.per_shard[0].images_per_s == pytest.approx(4 / 3.1)
    assert rep.wall_seconds == pytest.approx(15.0) and rep.images_per_s == pytest.approx(6 / 15)
    assert rep.stage_seconds["generate"] == pytest.approx(3.0)
    # The tasks' totals are not stages: kept apart.
    assert not {"load", "total", "cpu"} & set(rep.stage_seconds)
    assert rep.task_seconds == {"load": pytest.approx(2.0), "wall": pytest.approx(2.2 + 0.5 * 6)}
    assert 0 < rep.shard_bytes < rep.disk_bytes
    assert rep.config["num_aux"] == 2 and rep.config["controlnet"] == "lllyasviel/sd-controlnet-hed"
    assert rep.provenance["device"] == ["cpu"]
    json.dumps(rep.to_dict())  # serialisable for --json


def test_the_config_shown_is_every_jobconfig_field(failed_run: SyntheticRun) -> None:
    """Every JobConfig field decides the images, so the report shows them all (cache_interval and
    detect_resolution included), in the dataclass's order."""
    shown = list(report.summarise(failed_run.run_dir).config)
    assert shown == [f.name for f in dataclasses.fields(JobConfig)]
    assert {"cache_interval", "detect_resolution"} <= set(shown)


def test_a_new_jobconfig_field_appears_without_touching_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    grown = dataclasses.make_dataclass(
        "GrownJobConfig",
        [("sharpness", float, dataclasses.field(default=0.5))],
        bases=(JobConfig,),
        frozen=True,
    )
    config = dataclasses.asdict(JobConfig()) | {"sharpness": 0.7, "not_a_setting": 1}
    assert "sharpness" not in report.config_summary(config)
    monkeypatch.setattr(report, "JobConfig", grown)
    shown = report.config_summary(config)
    assert shown["sharpness"] == 0.7 and "not_a_setting" not in shown


def test_score_stats_of_an_unscored_run(failed_run: SyntheticRun) -> None:
    stats = report.score_stats(failed_run.run_dir)
    assert (stats.rows, stats.scored, stats.mean, stats.lowest) == (6, 0, None, [])
    assert stats.bins == [0] * report.SCORE_BINS
