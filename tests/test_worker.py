"""The shard task's settings: what each batch knob sets, and the model-cache key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from difaug.config import ConfigError, JobConfig, RuntimeConfig, resolve_job
from difaug.worker import default_condition_factory, factory_key, model_settings, stage_sizes


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


def test_stage_sizes_follow_the_batch_size() -> None:
    assert stage_sizes(8, 2) == stage_sizes(8, 2)
    sizes = stage_sizes(8, 2)
    assert (sizes.prepare_chunk, sizes.queue_depth) == (4, 16)
    assert stage_sizes(8, 10).prepare_chunk == 2  # at least two samples per chunk
    assert stage_sizes(1, 1).queue_depth == 2


def test_model_cache_key_holds_exactly_the_loading_settings() -> None:
    from difaug.config import Job
    from difaug.testing import sleep_generator_factory

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
