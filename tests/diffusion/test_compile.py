"""The torch.compile path on the CPU with the tiny model: same images as eager, static shapes,
eager fallback when compilation fails, warm-up in the shard stats, and the shared cache folder.

Inductor's C++ compile of the tiny UNet + ControlNet + VAE decoder takes minutes on this 2-core
machine, so the whole generator is compiled with the `aot_eager` backend (dynamo graph capture
and AOT autograd tracing, the same wrapping, padding and fallback as inductor), and inductor
itself — the generated kernels and the cache folder — is exercised on the VAE decoder, in fresh
processes, so the second one can only be faster through the on-disk cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _runner_helpers import job, make_dataset, verified_stats

from difaug.core.config import JobConfig, RuntimeConfig
from difaug.diffusion.sampler import AuxGenerator, make_work_items
from difaug.diffusion.speed import COMPILE_CACHE_DIRNAME, MEGA_CACHE_FILE, compile_pipeline, is_compiled
from difaug.inputs.manifest import Sample
from difaug.run.driver import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cfg(tiny_models: Path) -> JobConfig:
    return JobConfig(model=str(tiny_models), steps=2, num_aux=3, condition="hed").validate()


def _items(cfg: JobConfig) -> list:
    s = Sample(row=1, sample_id="a", image="", mask="", class_id=8, class_name="cat")
    cond = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return make_work_items(s, cond, (80, 64), cfg)


def _eager(cfg: JobConfig) -> AuxGenerator:
    return AuxGenerator.from_config(cfg, RuntimeConfig(device="cpu", batch_size=4, compile="off"))


def test_compiled_generator_matches_eager(cfg: JobConfig) -> None:
    eager = _eager(cfg)
    compiled = _eager(cfg)
    compile_pipeline(compiled.pipe, backend="aot_eager")
    gen = AuxGenerator(compiled.pipe, cfg, batch_size=4)
    assert is_compiled(gen.pipe) and gen.pad_batches  # 3 items → one padded batch of 4
    items = _items(cfg)
    out = gen.generate(items)
    ref = eager.generate(items)
    assert [r.item for r in out] == items
    for a, b in zip(out, ref, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    assert gen.warmup_seconds > 0 and gen.warnings == []
    first = gen.warmup_seconds
    gen.generate(items)  # the same shape again: no new warm-up
    assert gen.warmup_seconds == first


def test_every_working_size_gets_its_graph_past_dynamos_limit_of_eight(cfg: JobConfig) -> None:
    """Static shapes: one graph per working size. Called from another thread, as a shard's device
    thread calls the generator, a decoder compiled for 10 sizes holds 10 graphs, where dynamo's
    default limit would run the 9th and 10th eagerly."""
    import threading

    from torch._dynamo.utils import counters

    from difaug.diffusion.speed import COMPILED_SHAPES_LIMIT

    assert COMPILED_SHAPES_LIMIT >= 10
    one = replace(cfg, num_aux=1, steps=1)
    gen = _eager(one)
    compile_pipeline(gen.pipe, backend="aot_eager", parts=("decoder",))
    gen = AuxGenerator(gen.pipe, one, batch_size=1)
    s = Sample(row=1, sample_id="a", image="", mask="", class_id=8, class_name="cat")
    before = counters["stats"]["unique_graphs"]
    errors: list[BaseException] = []

    def device_thread() -> None:
        try:
            for k in range(1, 11):
                cond = np.zeros((64, 64 * k, 3), np.uint8)
                gen.generate(make_work_items(s, cond, (64 * k, 64), one))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=device_thread)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive() and errors == []
    assert counters["stats"]["unique_graphs"] - before == 10 and gen.warnings == []


def _broken_backend(gm, example_inputs):
    raise RuntimeError("compiler exploded")


def test_failed_compilation_falls_back_to_eager(cfg: JobConfig) -> None:
    eager = _eager(cfg)
    broken = _eager(cfg)
    compile_pipeline(broken.pipe, backend=_broken_backend)
    gen = AuxGenerator(broken.pipe, cfg, batch_size=4)
    items = _items(cfg)
    out = gen.generate(items)
    assert not is_compiled(gen.pipe)
    assert len(gen.warnings) == 1 and "compiler exploded" in gen.warnings[0]
    for a, b in zip(out, eager.generate(items), strict=True):
        assert np.array_equal(a.image, b.image)


def test_shard_stats_record_warmup_and_the_cache_folder(tiny_models: Path, tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    j = job(manifest, out, model=str(tiny_models), runtime={"compile": "auto"})
    summary = run(j)
    assert summary.ok
    stats = verified_stats(out)
    assert stats and all(s.seconds["warmup"] > 0 and s.compile_warnings == () for s in stats)
    # CPU: compile "auto" stays eager, so nothing was compiled into the default cache folder.
    assert not (out / COMPILE_CACHE_DIRNAME / MEGA_CACHE_FILE).exists()


_INDUCTOR_SCRIPT = r"""
import json, sys, types, torch
from difaug.diffusion.speed import MEGA_CACHE_FILE, compile_pipeline, first_call_done, save_compile_cache
from torch._dynamo.utils import counters
torch.manual_seed(0)
# A decoder-like block (conv, GroupNorm, SiLU, 1×1 conv): inductor's C++ build of the tiny VAE
# decoder alone takes minutes here, and the cache behaves the same for any module.
block = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.SiLU(),
                            torch.nn.Conv2d(16, 3, 1)).eval()
pipe = types.SimpleNamespace(vae=types.SimpleNamespace(decoder=block))
x = torch.randn(2, 4, 16, 16)
with torch.no_grad():
    eager = block(x)
    compile_pipeline(pipe, cache_dir=sys.argv[1], parts=("decoder",))
    compiled = pipe.vae.decoder(x)
saved = save_compile_cache(sys.argv[1])
# A cache folder that cannot be written (here: a path below a file) is a warning, not an error.
warnings, shapes = [], set()
first_call_done(shapes, (2, 4, 16, 16), 0.0, sys.argv[1] + "/" + MEGA_CACHE_FILE + "/sub", warnings.append)
print(json.dumps({"max_diff": float((compiled - eager).abs().max()), "saved": saved,
                  "hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"],
                  "unsaved": warnings, "shapes": [list(s) for s in shapes]}))
"""


@pytest.mark.slow
def test_inductor_matches_eager_and_reuses_the_cache_folder(tmp_path: Path) -> None:
    """Two fresh processes compile one block with inductor through `compile_pipeline` into one
    cache folder: the first compiles (cache misses) and saves the artefacts, the second finds
    them (cache hits, no miss). Both match eager within fp32 tolerance. A cache that cannot be
    saved is `first_call_done`'s warning, the shape still booked. How much time the cache
    saves on the real pipeline is measured in benchmarks/compile_cache.py, not here."""
    cache = tmp_path / "cache"

    def once(folder: Path = cache) -> dict:
        res = subprocess.run(
            [sys.executable, "-c", _INDUCTOR_SCRIPT, str(folder)], capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    first = once()
    assert first["max_diff"] <= 1e-5 and first["misses"] >= 1 and first["saved"] > 0
    ((unsaved,), shapes) = first["unsaved"], first["shapes"]
    assert unsaved.startswith("compile cache not saved: ") and shapes == [[2, 4, 16, 16]]
    assert (cache / MEGA_CACHE_FILE).is_file() and any((cache / "inductor").iterdir())
    second = once()
    assert second["max_diff"] <= 1e-5
    assert second["hits"] >= 1 and second["misses"] == 0
    # Portable: the artefacts file alone, copied into an empty folder (another machine's cache,
    # with no inductor folder of its own), gives the same hits and no compile.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy2(cache / MEGA_CACHE_FILE, moved / MEGA_CACHE_FILE)
    third = once(moved)
    assert third["max_diff"] <= 1e-5
    assert third["hits"] >= 1 and third["misses"] == 0


def broken_compile_factory(cfg: JobConfig, runtime: RuntimeConfig) -> AuxGenerator:
    """The default generator, compiled with a backend that always fails (picklable, for the runner)."""
    from dataclasses import replace

    gen = AuxGenerator.from_config(cfg, replace(runtime, compile="off"))
    compile_pipeline(gen.pipe, backend=_broken_backend)
    return AuxGenerator(gen.pipe, cfg, batch_size=runtime.batch_size)


def test_a_failed_compilation_is_a_warning_in_the_stats_not_a_failed_shard(
    tiny_models: Path, tmp_path: Path
) -> None:
    manifest = make_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    summary = run(job(manifest, out, model=str(tiny_models)), generator_factory=broken_compile_factory)
    assert summary.ok and summary.images == 4
    (stats,) = verified_stats(out)
    assert stats.done == 2 and stats.seconds["warmup"] > 0
    assert len(stats.compile_warnings) == 1 and "compiler exploded" in stats.compile_warnings[0]
