"""The driver end to end: Dask and in-process execution, resume, refusal, failures, the CLI.

Real LocalCluster, real Parquet, the tiny random model (fixture `tiny_models`) where images matter,
the SleepGenerator (real everything else) where only the driver's bookkeeping is under test."""

from __future__ import annotations

import functools
import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _runner_helpers import (
    all_keys,
    aux_images,
    job,
    make_dataset,
    make_sample,
    shard_bytes,
    sleep_factory,
    verified_shards,
    verified_stats,
    write_csv,
    write_job_file,
)
from PIL import Image

from difaug.core.config import JobConfig, RuntimeConfig
from difaug.inputs.manifest import read_manifest
from difaug.run import shards
from difaug.run.driver import run
from difaug.run.layout import marker_path, plan_path, read_plan, shard_path
from difaug.run.shard_process import shards_in_flight

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- failures


def _bad_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [make_sample(folder, i, (96, 64)) for i in range(6)]
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small_mask.png")
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(folder / "empty_mask.png")
    rows[1]["image"] = "missing.jpg"  # file not found
    rows[2]["image"] = "corrupt.jpg"  # undecodable
    rows[3]["mask"] = "small_mask.png"  # size mismatch
    rows[4]["mask"] = "empty_mask.png"  # no foreground pixel
    rows.append({**rows[0], "class_id": "abc"})  # not normalisable
    rows.append(dict(rows[5]))  # duplicate sample id
    return write_csv(folder / "manifest.csv", rows)


def test_bad_inputs_become_recorded_failures(tmp_path: Path, tiny_models: Path) -> None:
    m = _bad_inputs(tmp_path / "d")
    out = tmp_path / "out"
    s = run(job(m, out, condition="hed", model=str(tiny_models), shard_size=3))
    assert s.rows == 8
    assert s.done == 2 and s.failed == 6 and not s.ok
    by_row = {f.row: f for f in s.failures}
    assert sorted(by_row) == [2, 3, 4, 5, 7, 8]
    assert "missing.jpg" in by_row[2].reason
    assert "corrupt.jpg" in by_row[3].reason
    assert by_row[7].stage == "manifest" and "class_id" in by_row[7].reason
    assert by_row[8].stage == "validate" and "duplicate" in by_row[8].reason
    assert all(f.reason for f in s.failures)
    keys = all_keys(out)
    assert sorted(keys) == ["img00000_1/0", "img00000_1/1", "img00005_8/0", "img00005_8/1"]
    stats = verified_stats(out)
    assert sum(x.done + x.failed for x in stats) == 8
    assert sum(len(x.failures) for x in stats) == 6


class _PickyCondition:
    """The real seg condition, except that it refuses one sample (as an empty mask would)."""

    def __init__(self, bad: str, error: type[Exception]):
        from difaug.conditions import make_condition

        self.inner, self.bad, self.error = make_condition("seg", resolution=64), bad, error
        self.fallbacks = self.inner.fallbacks

    def __call__(self, batch: list[Any]) -> list[Any]:
        if any(x.sample.sample_id == self.bad for x in batch):
            raise self.error(f"no foreground in {self.bad}")
        return self.inner(batch)


def _picky_condition_factory(
    cfg: JobConfig, runtime: RuntimeConfig, *, bad: str, error: type[Exception] = ValueError
) -> Any:
    return _PickyCondition(bad, error)


def test_in_task_failures_isolated_to_their_rows(tmp_path: Path) -> None:
    """Files that break after validation, and a condition that fails for one sample of a batch."""
    from difaug.run.records import ShardRange
    from difaug.run.task import ShardSpec, run_shard

    m = make_dataset(tmp_path / "d", 4)
    samples = read_manifest(m).samples
    (tmp_path / "d" / "img00001.jpg").unlink()  # gone after validation
    j = job(m, tmp_path / "out", shard_size=4, runtime={"batch_size": 8})
    spec = ShardSpec(ShardRange(0, 1, 5), tuple(samples), (), str(tmp_path / "out"), "h" * 64)
    stats = run_shard(
        spec,
        j,
        sleep_factory(),
        functools.partial(_picky_condition_factory, bad="img00002_12"),
    )
    assert (stats.done, stats.failed, stats.images) == (2, 2, 4)
    stages = {f.row: (f.stage, f.reason) for f in stats.failures}
    assert stages[2][0] == "read" and "img00001.jpg" in stages[2][1]
    assert stages[3] == ("condition", "no foreground in img00002_12")
    written = shards.read_shard(shard_path(tmp_path / "out", 0), ["key"]).column("key").to_pylist()
    assert stats.file.rows == len(written)
    assert sorted(written) == [
        "img00000_1/0",
        "img00000_1/1",
        "img00003_15/0",
        "img00003_15/1",
    ]


def _flaky_factory(cfg: JobConfig, runtime: RuntimeConfig, *, bad: str) -> Any:
    return _Flaky(bad, runtime.batch_size)


class _Flaky:
    """A generator that fails every batch holding sample `bad` (a broken shard)."""

    def __init__(self, bad: str, batch_size: int):
        from difaug.testing.standins import SleepGenerator

        self.inner = SleepGenerator(1.0, batch_size)
        self.batch_size, self.provenance, self.bad = batch_size, self.inner.provenance, bad

    def generate(self, items: list[Any]) -> list[Any]:
        if any(it.sample_id == self.bad for it in items):
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        return self.inner.generate(items)


def test_failed_shard_recorded_then_redone(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 5)
    out = tmp_path / "out"
    s = run(job(m, out), generator_factory=functools.partial(_flaky_factory, bad="img00002_12"))
    assert s.failed_shards == [1] and s.failed == 2 and s.done == 3 and not s.ok
    assert {f.stage for f in s.failures} == {"task"}
    assert "device-side assert" in s.failures[0].reason
    assert not marker_path(out, 1).exists()  # no marker: a rerun retries the shard
    s2 = run(job(m, out), generator_factory=sleep_factory())
    assert s2.done == 2 and s2.skipped == 3 and s2.ok
    assert len(all_keys(out)) == 10


def _write_fails_for_shard(index: int) -> Any:
    real = shards.write_shard

    def write_shard(path: Path, rows: list[dict]) -> Path:
        if Path(path).name == f"{index:05d}.parquet":
            raise RuntimeError("simulated failure while writing")
        return real(path, rows)

    return write_shard


@pytest.mark.parametrize("stage", ["prepare", "generate", "write"])
def test_a_failing_shard_next_to_good_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """Two shards in flight: the middle shard fails in one of its stages; its neighbours finish,
    its rows are recorded as failures, and no lock is left held (the run ends, the next works)."""
    from difaug.run import verify

    m = make_dataset(tmp_path / "d", 6)  # shards [1, 3), [3, 5), [5, 7)
    out = tmp_path / "out"
    factories: dict[str, Any] = {"generator_factory": sleep_factory()}
    if stage == "prepare":  # not an input error: the task fails
        factories["condition_factory"] = functools.partial(
            _picky_condition_factory, bad="img00002_12", error=RuntimeError
        )
    elif stage == "generate":
        factories["generator_factory"] = functools.partial(_flaky_factory, bad="img00002_12")
    else:
        monkeypatch.setattr(shards, "write_shard", _write_fails_for_shard(1))
    result: list[Any] = []
    driver = threading.Thread(target=lambda: result.append(run(job(m, out), **factories)), daemon=True)
    driver.start()
    driver.join(timeout=120)
    assert not driver.is_alive(), "the run did not end: a lock was left held"
    s = result[0]
    assert s.failed_shards == [1] and (s.done, s.failed) == (4, 2)
    assert [(f.row, f.stage) for f in s.failures] == [(3, "task"), (4, "task")]
    checks = verify.verify_run(out).checks
    assert checks[0].ok and checks[2].ok and not marker_path(out, 1).exists()
    monkeypatch.undo()
    again = run(job(m, out), generator_factory=sleep_factory())
    assert again.ok and again.done == 2 and len(all_keys(out)) == 12


class _Interrupted(Exception):
    pass


_INTERRUPTED = threading.Event()


class _HeldGenerator:
    """The sleep generator, except that every batch after its first waits for the interruption:
    no shard can finish before the driver is interrupted."""

    def __init__(self, batch_size: int):
        from difaug.testing.standins import SleepGenerator

        self.inner = SleepGenerator(20.0, batch_size)
        self.batch_size, self.provenance, self.calls = batch_size, self.inner.provenance, 0

    def generate(self, items: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls > 1:
            _INTERRUPTED.wait(30)
        return self.inner.generate(items)


def _held_factory(cfg: JobConfig, runtime: RuntimeConfig) -> Any:
    return _HeldGenerator(runtime.batch_size)


def _interrupt(event: Any) -> None:
    from difaug.run import driver

    if isinstance(event, driver.ShardProgress):  # the first batch is done
        _INTERRUPTED.set()
        raise _Interrupted


def test_an_interrupted_sync_run_cancels_its_shards_and_writes_nothing_after(tmp_path: Path) -> None:
    """The driver stops (Ctrl-C, a failing event sink) while two shards are in flight: they are
    cancelled and waited for before `run` raises, so nothing writes into OUT after its lock is let
    go; no other shard starts, and a rerun finishes every row."""
    _INTERRUPTED.clear()
    m = make_dataset(tmp_path / "d", 5)
    out = tmp_path / "out"
    j = job(m, out, runtime={"batch_size": 1})
    with pytest.raises(_Interrupted):
        run(j, generator_factory=_held_factory, on_event=_interrupt)
    assert not [t for t in threading.enumerate() if t.name.startswith("difaug-shard")]
    assert not list((out / "stats").glob("*.json")) and not list((out / "shards").glob("*.parquet"))
    again = run(j, generator_factory=sleep_factory())
    assert again.ok and again.done == 5 and len(all_keys(out)) == 10


# ----------------------------------------------------------------------------- real model, real cluster


@pytest.fixture(scope="module")
def tiny_job_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two aspect ratios → two working sizes → two batch buckets in a shard.
    return make_dataset(tmp_path_factory.mktemp("data"), 5, sizes=[(96, 64), (64, 64)])


@pytest.mark.slow
def test_local_two_workers_matches_sync(tmp_path: Path, tiny_models: Path, tiny_job_data: Path) -> None:
    """The same bytes from two Dask workers, from this process with two shards in flight, and
    from this process with one shard at a time."""

    cfg = {"condition": "hed", "model": str(tiny_models), "num_aux": 2, "shard_size": 2}
    local = run(job(tiny_job_data, tmp_path / "local", runtime={"cluster": "local", "workers": 2}, **cfg))
    sync = run(job(tiny_job_data, tmp_path / "sync", runtime={"cluster": "sync"}, **cfg))
    with shards_in_flight(1):
        one_at_a_time = run(job(tiny_job_data, tmp_path / "one", runtime={"cluster": "sync"}, **cfg))
    assert local.ok and sync.ok and one_at_a_time.ok and local.images == 10
    assert shard_bytes(tmp_path / "sync") == shard_bytes(tmp_path / "one")
    table = shards.read_shard(verified_shards(tmp_path / "local")[0])
    rows = table.to_pylist()
    from difaug.diffusion.sampler import derive_seed

    for r in rows:
        assert r["seed"] == derive_seed(0, r["sample_id"], r["aux_index"])
        assert r["prompt"] == f"a real shot photo of {r['class_name']}, best quality, extremely detailed"
        img = Image.open(io.BytesIO(r["aux_image"]["bytes"]))
        assert img.size == (r["width"], r["height"])
    keys = all_keys(tmp_path / "local")
    assert len(keys) == len(set(keys)) == 10
    # Every shard ran in one of the two worker processes, none in this one.
    pids = {s.worker["pid"] for s in verified_stats(tmp_path / "local")}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids, pids
    assert aux_images(tmp_path / "local") == aux_images(tmp_path / "sync")
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "sync")


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from difaug.cli import app

    return CliRunner().invoke(app, ["generate", *args])


def test_cli_exit_codes_and_yaml(tmp_path: Path, tiny_models: Path) -> None:
    keys = "condition: seg\nnum_aux: 1\nresolution: 64\nsteps: 2\nshard_size: 2\nexecution:\n  cluster: sync\n  batch_size: 2\n"
    cfg = write_job_file(tmp_path, make_dataset(tmp_path / "d", 3), keys)
    out = tmp_path / "out"
    res = _cli("--config", str(cfg), "--model", str(tiny_models), "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert read_plan(out).config["model"] == str(tiny_models)
    assert "done 3 + failed 0 + skipped 0 = 3" in res.output
    # a flag overriding a job key on the same OUT: refused, exit 2, message names the key
    res = _cli("--config", str(cfg), "--model", str(tiny_models), "--out", str(out), "--steps", "3")
    assert res.exit_code == 2 and "steps" in res.output
    res = _cli("--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o2"))
    assert res.exit_code == 2 and "nope.csv" in res.output
    res = _cli("--config", str(cfg), "--out", str(tmp_path / "o3"), "--cluster", "moon")
    assert res.exit_code == 2 and "moon" in res.output
    # a row that fails → exit 1
    (tmp_path / "d" / "img00001.jpg").write_bytes(b"broken")
    res = _cli("--config", str(cfg), "--model", str(tiny_models), "--out", str(tmp_path / "o4"))
    assert res.exit_code == 1, res.output
    assert "row 2 img00001_8 [validate] image:" in res.output


def test_pipeline_yamls_resolve() -> None:
    from difaug.core.config import resolve_job

    files = sorted((REPO / "pipelines").glob("*.yaml"))
    names = {f.stem for f in files}
    for fold in range(4):
        for cond in ("seg", "hed", "scribble"):
            assert f"pascal5i-fold{fold}-{cond}" in names
    assert {"coco20i-interleaved-fold0-hed", "coco20i-contiguous-fold0-hed", "fss1000-hed", "demo"} <= names
    for f in files:
        j = resolve_job(f)
        assert j.manifest and j.out
        if f.stem.startswith("pascal5i"):
            assert j.config.condition == f.stem.rsplit("-", 1)[1]
    demo = resolve_job(REPO / "pipelines" / "demo.yaml")
    assert demo.manifest == "manifests/demo/manifest.csv" and demo.runtime.workers == 1


def test_unpicklable_factory_refused_before_the_plan(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 1)
    out = tmp_path / "out"
    with pytest.raises(TypeError, match="must be picklable"):
        run(job(m, out), generator_factory=lambda cfg, rt: None)
    assert not plan_path(out).exists()


def test_model_cache_key_follows_every_loading_setting(tmp_path: Path) -> None:
    from difaug.run.model_cache import factory_key

    m = make_dataset(tmp_path / "d", 1)
    keys = {
        factory_key(sleep_factory(), None, job(m, tmp_path / "o", runtime=rt))
        for rt in ({}, {"compile": True}, {"compile": True, "compile_mode": "max-autotune"})
    }
    assert len(keys) == 3


# ----------------------------------------------------------------------------- events


def test_run_reports_through_events_and_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The library draws nothing: progress and notes are typed events; without a sink, logging."""
    from difaug.run import driver

    m = make_dataset(tmp_path / "d", 5)
    events: list[driver.RunEvent] = []
    s = run(job(m, tmp_path / "out", shard_size=2), generator_factory=sleep_factory(), on_event=events.append)
    assert s.ok and s.done == 5
    plan = events[0]
    assert isinstance(plan, driver.PlanMade)
    assert (plan.rows, plan.shards, plan.shards_done, plan.shards_todo, plan.images_todo) == (5, 3, 0, 3, 10)
    finished = [e for e in events if isinstance(e, driver.ShardFinished)]
    assert sorted(e.index for e in finished) == [0, 1, 2] and sum(e.images for e in finished) == 10
    assert any(isinstance(e, driver.ShardProgress) for e in events)  # per batch, before the end

    with caplog.at_level("INFO", logger="difaug.run.driver"):
        again = run(job(m, tmp_path / "out", shard_size=2), generator_factory=sleep_factory())
    assert again.skipped == 5
    assert "3 shards already done, 0 to do" in caplog.text
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize(
    ("settings", "runtime", "says"),
    [
        ({"model": "EMPTY"}, {}, "no model_index.json"),
        ({}, {"device": "cuda"}, "CUDA is not available here"),
        ({}, {"device": "cpu", "dtype": "float16"}, "float16 is not supported on CPU"),
    ],
    ids=["empty-model-folder", "cuda-without-gpu", "fp16-on-cpu"],
)
def test_bad_models_or_device_refused_before_the_plan(
    tmp_path: Path, tiny_models: Path, settings: dict, runtime: dict, says: str
) -> None:
    if runtime.get("device") == "cuda" and torch_cuda_available():
        pytest.skip("this machine has a GPU")
    from difaug.core.errors import DifaugError

    (tmp_path / "empty").mkdir()
    model = str(tmp_path / "empty") if settings.get("model") == "EMPTY" else str(tiny_models)
    j = job(make_dataset(tmp_path / "d", 2), tmp_path / "out", runtime=runtime, model=model)
    with pytest.raises(DifaugError, match=says) as err:
        run(j)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert not plan_path(tmp_path / "out").exists()


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_local_workers_capped_to_cores_and_shards(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from dataclasses import replace

    from difaug.run.driver import _capped_workers

    j = job(tmp_path / "m.csv", tmp_path / "out", runtime={"cluster": "local", "workers": 64})
    with caplog.at_level("WARNING"):
        capped = _capped_workers(j, shards=3)
    assert capped.runtime.workers == min(3, os.cpu_count() or 1)
    assert "--workers 64 capped to" in caplog.text
    slurm = replace(j, runtime=replace(j.runtime, cluster="slurm"))
    assert _capped_workers(slurm, shards=3).runtime.workers == 64  # other machines' cores: not ours to cap


def test_dask_shutdown_noise_is_dropped_unless_verbose() -> None:
    import logging

    from difaug.run.driver import _quiet_shutdown

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.nanny", logging.WARNING, __file__, 1, msg, (4.0,), None)

    assert not _quiet_shutdown(record("Worker process still alive after %.1f seconds, killing"))
    assert _quiet_shutdown(record("Restarting worker %s"))  # every other note stays
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert _quiet_shutdown(record("Worker process still alive after %.1f seconds, killing"))
    finally:
        root.setLevel(old)


def test_a_prompt_cut_by_the_text_encoder_is_said_once_per_run(tmp_path: Path, tiny_models: Path) -> None:
    """Two shards share one over-long prompt: the marker of the shard that met it first names it,
    and the run says so once."""
    from difaug.run.driver import PromptsCut

    folder = tmp_path / "d"
    folder.mkdir()
    long_name = "ab " * 1666 + "cd"  # 5000 characters, far past CLIP's 77 tokens
    rows = [make_sample(folder, i) | {"class_name": long_name, "sample_id": f"s{i}"} for i in range(4)]
    events: list[Any] = []
    summary = run(
        job(write_csv(folder / "manifest.csv", rows), tmp_path / "out", model=str(tiny_models), num_aux=1),
        on_event=events.append,
    )
    assert summary.ok and summary.shards_done == 2
    cut = [e for e in events if isinstance(e, PromptsCut)]
    assert cut == [PromptsCut(prompts=1, limit=77)]
    named = [w for s in verified_stats(tmp_path / "out") for w in s.compile_warnings]
    assert len(named) == 1 and named[0].startswith("prompt cut to 77 tokens [")
