"""DeepCache-style feature caching (`cache_interval`) on the tiny model: interval 1 is the plain
path, interval k runs the deep blocks and the ControlNet on every k-th step only, a full step is
bit for bit a plain one, and the cached images stay close to the plain ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from difaug.core.config import ConfigError, JobConfig, RuntimeConfig
from difaug.diffusion.contracts import WorkItem
from difaug.diffusion.deepcache import install_feature_cache
from difaug.diffusion.sampler import AuxGenerator, make_work_items
from difaug.inputs.manifest import Sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUNTIME = RuntimeConfig(device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def cfg(tiny_models: Path) -> JobConfig:
    return JobConfig(model=str(tiny_models), steps=6, num_aux=2, condition="hed").validate()


def _items(cfg: JobConfig) -> list[WorkItem]:
    out = []
    for i, name in enumerate(["cat", "dog"]):
        sample = Sample(row=i + 1, sample_id=f"s{i}", image="", mask="", class_id=1, class_name=name)
        cond = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        out += make_work_items(sample, cond, (64, 64), cfg)
    return out


def _steps_run(gen: AuxGenerator, items: list[WorkItem]) -> dict[str, list[int]]:
    """The denoising steps on which the shallow branch, the deep blocks and the ControlNet ran."""
    cache = gen.feature_cache
    seen: dict[str, list[int]] = {"shallow": [], "deep": [], "controlnet": []}

    def record(part: str):
        return lambda *_: seen[part].append(cache.step if cache is not None else len(seen[part]))

    pipe = gen.pipe
    handles = [
        pipe.unet.conv_in.register_forward_hook(record("shallow")),
        pipe.unet.mid_block.resnets[0].register_forward_hook(record("deep")),
        pipe.controlnet.conv_in.register_forward_hook(record("controlnet")),
    ]
    try:
        gen.sample(items)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_interval_one_leaves_the_pipeline_as_it_is(cfg: JobConfig) -> None:
    plain = AuxGenerator.from_config(cfg, RUNTIME)
    assert plain.feature_cache is None and install_feature_cache(plain.pipe, 1) is None
    # Nothing wrapped: diffusers' own forwards run.
    assert "forward" not in vars(plain.pipe.unet) and "forward" not in vars(plain.pipe.controlnet)
    seen = _steps_run(plain, _items(cfg))
    assert seen["shallow"] == seen["deep"] == seen["controlnet"] == list(range(cfg.steps))


@pytest.mark.parametrize("interval", [2, 4])
def test_interval_k_runs_the_deep_blocks_every_kth_step(cfg: JobConfig, interval: int) -> None:
    gen = AuxGenerator.from_config(replace(cfg, cache_interval=interval), RUNTIME)
    assert gen.feature_cache is not None and gen.feature_cache.interval == interval
    items = _items(cfg)
    for _ in range(2):  # the step count starts afresh with every pipeline call
        seen = _steps_run(gen, items)
        full = [s for s in range(cfg.steps) if s % interval == 0]
        assert seen["shallow"] == list(range(cfg.steps))
        assert seen["deep"] == seen["controlnet"] == full
    assert gen.feature_cache.full_steps == 2 * len(full)


def test_a_full_step_is_bit_for_bit_the_plain_one(cfg: JobConfig) -> None:
    """One step is a full step (step 0): the wrappers hand through exactly what the blocks compute."""
    one_step = replace(cfg, steps=1)
    items = _items(one_step)
    plain = AuxGenerator.from_config(one_step, RUNTIME).sample(items)
    cached = AuxGenerator.from_config(replace(one_step, cache_interval=3), RUNTIME).sample(items)
    assert np.array_equal(cached, plain)


def test_cached_images_stay_close_and_are_deterministic(cfg: JobConfig) -> None:
    """cache_interval 2 at 6 steps moves the images by a bounded amount (measured on the tiny
    model: mean |Δ| ≈ 0.007, max ≈ 0.05 on [0, 1] floats; asserted < 0.03 and < 0.25)."""
    items = _items(cfg)
    ref = AuxGenerator.from_config(cfg, RUNTIME).sample(items)
    cached = AuxGenerator.from_config(replace(cfg, cache_interval=2), RUNTIME)
    fast = cached.sample(items)
    delta = np.abs(fast - ref)
    assert 0 < delta.mean() < 0.03 and delta.max() < 0.25
    assert np.array_equal(cached.sample(items), fast)


def test_generators_on_one_pipeline_share_one_cache_of_one_interval(cfg: JobConfig) -> None:
    first = AuxGenerator.from_config(replace(cfg, cache_interval=2), RUNTIME)
    second = AuxGenerator(first.pipe, replace(cfg, cache_interval=2))
    assert second.feature_cache is first.feature_cache
    with pytest.raises(ValueError, match="already caches every 2 steps"):
        AuxGenerator(first.pipe, replace(cfg, cache_interval=3))
    with pytest.raises(ConfigError, match="cache_interval"):
        AuxGenerator(first.pipe, replace(cfg, cache_interval=0))
