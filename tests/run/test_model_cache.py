"""The model cache of the shard task: the key that decides when loaded models are reused, the HED
batch the default condition gets, and one model set per process that waits for its users."""

from __future__ import annotations

import functools
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from difaug.core.config import ConfigError, Job, JobConfig, RuntimeConfig, model_settings, resolve_job
from difaug.run.model_cache import ModelCache, default_condition_factory, factory_key
from difaug.testing.standins import make_dataset, sleep_generator_factory, small_job


def test_hed_batch_defaults_to_the_batch_size_and_can_be_set_apart() -> None:
    assert RuntimeConfig(batch_size=6).hed_batch_size == 6
    assert RuntimeConfig(batch_size=6, hed_batch=32).hed_batch_size == 32
    with pytest.raises(ConfigError, match="hed_batch"):
        RuntimeConfig(hed_batch=-1).validate()
    job = resolve_job(manifest="m.csv", out="o", hed_batch=12)
    assert job.runtime.hed_batch_size == 12 and job.runtime.batch_size == 8


def test_the_hed_condition_gets_the_hed_batch(tiny_models: Path) -> None:
    cfg = JobConfig(model=str(tiny_models), condition="hed", resolution=64).validate()
    cond = default_condition_factory(cfg, RuntimeConfig(device="cpu", batch_size=4, hed_batch=3))
    assert cond.batch_size == 3
    assert default_condition_factory(cfg, RuntimeConfig(device="cpu", batch_size=4)).batch_size == 4


def test_model_cache_key_holds_exactly_the_loading_settings() -> None:
    base = RuntimeConfig(compile="off")

    def key(**changes: object) -> str:
        job = Job(manifest="m.csv", out="o", runtime=replace(base, **changes))
        return factory_key(sleep_generator_factory, None, job)

    loading = {
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 3,
        "hed_batch": 5,
        "compile": "on",
        "compile_mode": "max-autotune",
        "offload": True,
        "vae_batch": 2,
    }
    for name, value in loading.items():
        assert key(**{name: value}) != key(), name
    others = {"threads_per_worker": 4, "retries": 0, "workers": 3, "cluster": "sync", "encode_threads": 3}
    for name, value in others.items():
        assert key(**{name: value}) == key(), name
    # hed_batch 0 means "the batch size": the same models as writing the batch size out.
    assert key(batch_size=6, hed_batch=6) == key(batch_size=6)
    # The compile cache folder matters only when compiling can happen.
    assert key(compile_cache_dir="/a") == key(compile_cache_dir="/b")
    assert key(compile="on", compile_cache_dir="/a") != key(compile="on", compile_cache_dir="/b")
    assert dict(model_settings(base))["hed_batch"] == base.batch_size


def test_another_jobs_models_wait_for_the_shards_in_flight(tmp_path: Path) -> None:
    """A shard of another job (another model-cache key) does not free the models a running shard
    uses: it loads once that shard is done. A shard of the same job never waits."""
    m = make_dataset(tmp_path / "d", 1)
    job_a, job_b = small_job(m, tmp_path / "a"), small_job(m, tmp_path / "b", seed=7)
    factory = functools.partial(sleep_generator_factory, ms_per_image=1.0)
    cache = ModelCache()

    def load_in_thread(job: Job) -> tuple[threading.Event, threading.Event, list[Any]]:
        loaded, release, got = threading.Event(), threading.Event(), []

        def body() -> None:
            with cache.use(job, factory, default_condition_factory) as models:
                got.append(models[0])
                loaded.set()
                release.wait(30)

        threading.Thread(target=body, daemon=True).start()
        return loaded, release, got

    with cache.use(job_a, factory, default_condition_factory) as (gen_a, _, _):
        same_loaded, same_release, same = load_in_thread(job_a)
        assert same_loaded.wait(10) and same[0] is gen_a  # same key: no wait, same models
        other_loaded, other_release, other = load_in_thread(job_b)
        assert not other_loaded.wait(0.5)  # job_a's models are in use
        same_release.set()
        assert not other_loaded.wait(0.5)  # still in use here
    assert other_loaded.wait(10)  # the last job_a user is done: job_b's models load
    assert other[0] is not gen_a
    other_release.set()
