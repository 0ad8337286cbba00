"""Regeneration (`min_drift_iou` T, `max_attempts` K) on the tiny model, end to end on CPU.

The tiny model's DiffSeg at its default KL thresholds sees one segment per image (every
`drift_iou` 0.0 here); at 0.001 its near-uniform attention maps split into several segments
(as in tests/diffusion/test_diffseg.py), so `drift_iou` varies with the seed and a small T fails
some first attempts and passes others. The generator factory below registers that DiffSeg for
its generator (`diffseg.for_generator` then returns it) and records every generator call.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _runner_helpers import job, shard_bytes, verified_stats
from PIL import Image

from difaug.core.config import ConfigError, JobConfig, RuntimeConfig
from difaug.diffusion import diffseg
from difaug.diffusion.sampler import AuxGenerator, derive_seed
from difaug.run import shards
from difaug.run.driver import run
from difaug.run.layout import plan_path
from difaug.testing.standins import make_dataset

T, K, X, BATCH = 0.01, 3, 2, 4
CALLS: list[list[tuple[str, int, int]]] = []  # every generator call: (sample_id, aux_index, seed) per item

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RecordingGenerator(AuxGenerator):
    """The real generator, recording which items each call got."""

    fail_in: frozenset[str] = frozenset()  # raise at the 2nd call holding one of these samples

    def generate(self, items: Sequence[Any]) -> list[Any]:
        CALLS.append([(it.sample_id, it.aux_index, it.seed) for it in items])
        # Only that shard's own batch dies: the other shard in flight may still be generating.
        holds = any(it.sample_id in self.fail_in for it in items)
        if holds and sum(any(sid in self.fail_in for sid, _, _ in c) for c in CALLS) >= 2:
            raise RuntimeError("killed mid-shard")
        return super().generate(items)


def fine_scoring_factory(
    cfg: JobConfig, runtime: RuntimeConfig, *, fail_in: tuple[str, ...] = ()
) -> AuxGenerator:
    gen = _RecordingGenerator.from_config(cfg, runtime)
    gen.fail_in = frozenset(fail_in)
    diffseg._SCORERS[gen] = diffseg.DiffSeg(gen.pipe, thresholds=(0.001,) * 3)
    return gen


def _job(data: Path, out: Path, models: Path, **cfg: Any) -> Any:
    settings = {"condition": "hed", "model": str(models), "num_aux": X, "shard_size": 3} | cfg
    return job(data, out, runtime={"batch_size": BATCH, "retries": 0}, **settings)


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "shards").glob("*.parquet")) for r in shards.read_shard(p).to_pylist()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One condition shape: a shard's 6 images fill a batch of 4 and leave room for retries.
    return make_dataset(tmp_path_factory.mktemp("data"), 6, size=(64, 64))


@pytest.fixture(scope="module")
def regen(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, data: Path) -> tuple[Path, list]:
    """A regenerating run and the generator calls it made."""
    out = tmp_path_factory.mktemp("regen") / "out"
    CALLS.clear()
    summary = run(
        _job(data, out, tiny_models, min_drift_iou=T, max_attempts=K), generator_factory=fine_scoring_factory
    )
    assert summary.ok and summary.done == 6 and summary.images == 6 * X
    return out, list(CALLS)


def test_failed_first_attempts_are_regenerated_until_they_pass_or_k_are_spent(regen) -> None:
    out, _ = regen
    rows = _rows(out)
    assert [(r["row"], r["aux_index"]) for r in rows] == sorted((r["row"], r["aux_index"]) for r in rows)
    assert Counter(r["sample_id"] for r in rows) == {
        f"img{i:05d}_{c}": X for i, c in enumerate([1, 8, 12, 15, 1, 8])
    }
    for r in rows:
        assert 1 <= r["attempts"] <= K and 0 <= r["attempt"] < r["attempts"], r["key"]
        # The row's seed is its kept attempt's, attempt 0 being the seed of a run without the option.
        assert r["seed"] == derive_seed(0, r["sample_id"], r["aux_index"], r["attempt"])
        if r["drift_pass"]:
            assert r["drift_iou"] >= T and r["attempt"] == r["attempts"] - 1  # the passing one is kept
        else:
            assert r["drift_pass"] is False and r["attempts"] == K and r["drift_iou"] < T
    first_failed = [r for r in rows if r["attempts"] > 1]
    assert first_failed and [r for r in rows if r["attempts"] == 1]  # some fail at first, some pass
    assert [r for r in first_failed if r["drift_pass"]], "some regenerated images passed"
    assert [r for r in rows if r["drift_pass"] is False], "some never passed"


def test_stats_count_the_attempts_and_reconcile(regen) -> None:
    out, calls = regen
    rows, stats = _rows(out), verified_stats(out)
    for s in stats:
        assert s.done + s.failed == s.samples and s.images == X * s.done
        assert len(s.passed_at) == K and sum(s.passed_at) + s.never_passed == s.images
    assert sum(s.never_passed for s in stats) == sum(r["drift_pass"] is False for r in rows)
    passed = Counter(r["attempt"] for r in rows if r["drift_pass"])
    assert [sum(s.passed_at[a] for s in stats) for a in range(K)] == [passed[a] for a in range(K)]
    assert sum(s.extra_images for s in stats) == sum(r["attempts"] - 1 for r in rows)
    assert sum(s.regenerated for s in stats) == sum(r["attempts"] > 1 for r in rows)
    assert all(s.regenerate_seconds > 0 for s in stats if s.regenerated)
    # Every generated image went through the generator once: kept images + the extra ones.
    assert sum(len(c) for c in calls) == sum(r["attempts"] for r in rows)


def test_regenerations_ride_in_full_batches(regen) -> None:
    """A retry waits in the shard's buckets for the next batch of its shape: while first attempts
    remain, the device gets full batches that mix retries with them; short batches come only at
    each shard's end (at most one per shape and attempt)."""
    out, calls = regen
    first = {(sid, k, derive_seed(0, sid, k)) for sid, k, _ in (c for call in calls for c in call)}
    mixed = [c for c in calls if len(c) == BATCH and set(c) & first and set(c) - first]
    assert mixed, "no full batch carried a regeneration"
    assert sum(len(c) < BATCH for c in calls) <= len(verified_stats(out)) * K
    assert len(calls) < sum(len(c) for c in calls)  # never one image at a time


def test_the_kept_attempt_equals_plain_diffusers_from_the_stored_seed(regen, tiny_models: Path) -> None:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler

    out, _ = regen
    row = next(r for r in _rows(out) if r["attempt"] > 0)
    controlnet = ControlNetModel.from_pretrained(tiny_models / "sd-controlnet-hed")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_models / "stable-diffusion-v1-5", controlnet=controlnet, safety_checker=None
    )
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    cfg = JobConfig()
    ref = pipe(
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        image=Image.open(io.BytesIO(row["condition_image"]["bytes"])).convert("RGB"),
        num_inference_steps=2,
        guidance_scale=cfg.guidance_scale,
        controlnet_conditioning_scale=cfg.controlnet_scale,
        generator=torch.Generator().manual_seed(row["seed"]),
        output_type="np",
    ).images[0]
    kept = np.asarray(Image.open(io.BytesIO(row["aux_image"]["bytes"])).convert("RGB")).astype(int)
    expected = (ref * 255).round().astype(int)
    assert kept.shape == expected.shape and np.abs(kept - expected).max() <= 1


def test_a_shard_killed_midway_resumes_to_the_same_bytes(
    regen, tmp_path: Path, tiny_models: Path, data
) -> None:
    out, _ = regen
    again = tmp_path / "again"
    CALLS.clear()  # shard 1 (rows 4-6) dies at its second batch, after shard 0 is written
    dying = functools.partial(fine_scoring_factory, fail_in=("img00003_15", "img00004_1", "img00005_8"))
    broken = run(_job(data, again, tiny_models, min_drift_iou=T, max_attempts=K), generator_factory=dying)
    assert not broken.ok and broken.failed_shards == [1]
    assert sorted(p.name for p in (again / "shards").glob("*.parquet")) == ["00000.parquet"]
    resumed = run(
        _job(data, again, tiny_models, min_drift_iou=T, max_attempts=K),
        generator_factory=fine_scoring_factory,
    )
    assert resumed.ok and resumed.shards_skipped == 1
    assert shard_bytes(again) == shard_bytes(out)


def _legacy_seed(job_seed: int, sample_id: str, aux_index: int) -> int:
    """derive_seed as it was before regeneration existed."""
    digest = hashlib.blake2b(f"{job_seed}/{sample_id}/{aux_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def test_off_by_default_writes_the_shards_of_a_run_without_the_option(
    tmp_path: Path, tiny_models: Path, data
) -> None:
    """Defaults (T 0, K 1): the shard schema, seeds and markers of before the option existed, and
    the bytes of T 0 / K 1 given explicitly."""
    default = run(_job(data, tmp_path / "default", tiny_models), generator_factory=fine_scoring_factory)
    explicit = run(
        _job(data, tmp_path / "explicit", tiny_models, min_drift_iou=0.0, max_attempts=1),
        generator_factory=fine_scoring_factory,
    )
    assert default.ok and explicit.ok
    assert shard_bytes(tmp_path / "default") == shard_bytes(tmp_path / "explicit")
    for path in sorted((tmp_path / "default" / "shards").glob("*.parquet")):
        table = shards.read_shard(path)
        assert table.schema.equals(shards.SCHEMA, check_metadata=True)
        for r in table.select(["sample_id", "aux_index", "seed"]).to_pylist():
            assert r["seed"] == _legacy_seed(0, r["sample_id"], r["aux_index"])
    for marker in sorted((tmp_path / "default" / "stats").glob("*.json")):
        d = json.loads(marker.read_text())
        assert d["passed_at"] == [] and d["extra_images"] == d["never_passed"] == 0


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"min_drift_iou": 1.5}, "min_drift_iou must be a number in [0, 1]"),
        ({"min_drift_iou": float("nan")}, "min_drift_iou must be a number in [0, 1]"),
        ({"min_drift_iou": True}, "min_drift_iou must be a number"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_values_are_refused_alone(settings: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        JobConfig(**settings).validate()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"min_drift_iou": 0.2, "score": "none"}, "set score to diffseg"),
        ({"max_attempts": 3}, "set min_drift_iou in (0, 1]"),
    ],
)
def test_settings_that_need_each_other_are_refused_before_the_plan(
    tmp_path: Path, data: Path, settings: dict, words: str
) -> None:
    from typer.testing import CliRunner

    from difaug.cli import app

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("]", r"\]")):
        run(job(data, out, **settings))
    assert not plan_path(out).exists()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    res = CliRunner().invoke(app, ["generate", "-m", str(data), "-o", str(out), "--cluster", "sync", *flags])
    assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, (
        res.output
    )
    assert not plan_path(out).exists()


def test_inspect_shows_the_attempt_histogram_and_the_kept_attempt(regen, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from difaug.cli import app
    from difaug.report import data, sheets

    out, _ = regen
    rows, report = _rows(out), data.summarise(out)
    regen_report = report.regeneration
    assert regen_report is not None and regen_report.images == len(rows) and regen_report.max_attempts == K
    assert regen_report.passed_at == [
        sum(r["drift_pass"] is True and r["attempt"] == a for r in rows) for a in range(K)
    ]
    assert regen_report.extra_per_kept == pytest.approx(sum(r["attempts"] - 1 for r in rows) / len(rows))
    scores = data.score_stats(out, lowest=3)
    low = {r["key"]: (r["attempt"], r["attempts"]) for r in rows}
    assert scores.lowest_attempts == {k: low[k] for k, _ in scores.lowest}
    labels = [row.sample_id for row in sheets.lowest_sheet_rows(out, scores)]
    assert all(
        f"attempt {low[k][0]} ({low[k][1]} generated)" in label
        for (k, _), label in zip(scores.lowest, labels, strict=True)
    )
    page = tmp_path / "page.html"
    res = CliRunner().invoke(app, ["inspect", str(out), "--html", str(page), "--thumb", "32"])
    assert res.exit_code == 0, res.output
    never = sum(r["drift_pass"] is False for r in rows)
    for text in (
        "regeneration",
        "passed at attempt",
        f"never passed (best attempt kept) │ {never} of {len(rows)}",
        "extra images per kept image",
        "device-seconds (cpu)",
    ):
        assert text in res.output, text
    html = page.read_text()
    assert "<h2>Regeneration</h2>" in html and "GPU-seconds" not in html and "device-seconds (cpu)" in html
    assert "<thead><tr><th></th>" not in html  # key-value tables have no empty header row
    assert "<td>base_model (shards)</td>" in html and "<td>scheduler (shards)</td>" in html
