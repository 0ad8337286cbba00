"""`difaug.run.warmup`: the shapes a job will use, from its manifest's headers; a warm-up that
compiles exactly those, so the job's shards then meet none new; the cache folder it fills, used
by a fresh process; and which jobs' workers compile at all (what `difaug generate` names).

Inductor's C++ build of the whole tiny generator takes about two minutes on this 2-core machine,
so (as in tests/diffusion/test_compile.py) the warm-up of the shapes runs the generator compiled
with `aot_eager` (dynamo's capture and guards, every shape a new graph, no kernels), and the cache
folder is filled by inductor compiling the VAE decoder only, in fresh processes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from _runner_helpers import job, make_dataset, sleep_factory, verified_shards, verified_stats, write_job_file
from PIL import Image
from torch._dynamo.utils import counters

from difaug.core.config import JobConfig, RuntimeConfig
from difaug.diffusion.sampler import AuxGenerator
from difaug.diffusion.speed import MEGA_CACHE_FILE, batched_vae_decode, compile_pipeline
from difaug.inputs.manifest import read_manifest
from difaug.run import driver, shards
from difaug.run.warmup import (
    WarmupError,
    WarmupStarted,
    compile_cache_of,
    job_shapes,
    warm_up,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Support sizes (w, h) at resolution 64: 96×64 and 100×64 both come to a 128×64 working size
# (controlnet's rounding of the long side to 64), 64×96 to 64×128.
WIDE, WIDER, TALL = (96, 64), (100, 64), (64, 96)


def _manifest(root: Path, sizes: list[tuple[int, int]]) -> Path:
    return make_dataset(root, len(sizes), sizes=sizes)


def test_the_shapes_are_the_working_sizes_of_the_rows_from_their_headers(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "d", [WIDE, TALL, WIDER, WIDE, TALL, WIDE])
    rows = (tmp_path / "d" / "manifest.csv").read_text().splitlines()
    # A row whose image is gone and a 40:1 strip the job refuses are left out, with why.
    Image.new("RGB", (400, 10)).save(tmp_path / "d" / "strip.jpg")
    rows += ["nothere.jpg,img00000.png,15,person,", "strip.jpg,img00000.png,15,person,"]
    m.write_text("\n".join(rows) + "\n")
    j = job(m, tmp_path / "out", runtime={"batch_size": 3, "vae_batch": 2})

    shapes = job_shapes(j, read_manifest(m).samples)

    assert [(s.width, s.height, s.rows) for s in shapes.sizes] == [(128, 64, 4), (64, 128, 2)]
    wide = shapes.sizes[0]
    assert [(s.width, s.height, s.rows) for s in wide.supports] == [(96, 64, 3), (100, 64, 1)]
    assert wide.sample.row == 1 and shapes.sizes[1].sample.row == 2  # the first row of each size
    assert (shapes.batch, shapes.vae_chunk, shapes.rows) == (3, 2, 8)
    assert [row for row, _ in shapes.skipped] == [7, 8]
    assert "not found" in shapes.skipped[0][1] and "aspect ratio" in shapes.skipped[1][1]

    # The plan's --limit: only the first rows count.
    limited = job_shapes(replace(j, limit=2), read_manifest(m).samples)
    assert [(s.width, s.height, s.rows) for s in limited.sizes] == [(128, 64, 1), (64, 128, 1)]
    assert limited.rows == 2 and limited.skipped == ()


# ----------------------------------------------------------------------------- the warm-up itself

_WARMED: dict[str, AuxGenerator] = {}


def aot_eager_factory(cfg: JobConfig, runtime: RuntimeConfig) -> AuxGenerator:
    """The workers' generator (`AuxGenerator.from_config`) compiled with `aot_eager` instead of
    inductor; the one it made last is kept, so a job run here can be handed the warmed generator."""
    gen = AuxGenerator.from_config(cfg, replace(runtime, compile="off"))
    batched_vae_decode(gen.pipe.vae, runtime.vae_batch, pad=True)  # as `prepare_pipeline` does when compiling
    compile_pipeline(gen.pipe, cache_dir=runtime.compile_cache_dir, backend="aot_eager")
    gen = AuxGenerator(
        gen.pipe, cfg, batch_size=runtime.batch_size, compile_cache_dir=runtime.compile_cache_dir
    )
    _WARMED["last"] = gen
    return gen


def warmed_factory(cfg: JobConfig, runtime: RuntimeConfig) -> AuxGenerator:
    return _WARMED["last"]


@pytest.mark.slow
def test_after_the_warm_up_the_jobs_shards_meet_no_new_shape(tiny_models: Path, tmp_path: Path) -> None:
    """Two aspect ratios, partial batches, drift scoring: the warm-up calls the generator (and the
    job's scorer) once per shape, and the job's own shards, run on that generator, then record no
    warm-up and dynamo traces no new graph: every batch they made had a shape the warm-up compiled."""
    m = _manifest(tmp_path / "d", [WIDE, TALL, WIDER, WIDE, TALL])
    j = job(
        m,
        tmp_path / "out",
        model=str(tiny_models),
        condition="hed",
        score="diffseg",
        shard_size=3,
        runtime={"compile": "on", "device": "cpu", "batch_size": 4, "vae_batch": 2},
    )
    events: list = []
    report = warm_up(j, generator_factory=aot_eager_factory, on_event=events.append)

    assert isinstance(events[0], WarmupStarted) and events[0].cache_dir == report.cache_dir
    assert events[1:] == list(report.warmed)
    generated = [(s.width, s.height, s.batch, s.rows) for s in report.warmed if s.kind == "generate"]
    assert generated == [(128, 64, 4, 3), (64, 128, 4, 2)]
    scored = {(s.width, s.height) for s in report.warmed if s.kind == "score"}
    from difaug.diffusion import diffseg

    model = diffseg.for_generator(_WARMED["last"], j.config)
    assert model is not None
    assert scored == {model.input_size(*size) for size in (WIDE, WIDER, TALL)}
    assert report.cache_dir == str(tmp_path / "out" / ".difaug-compile-cache")
    warmup_before = _WARMED["last"].warmup_seconds
    assert warmup_before > 0
    graphs_before = counters["stats"]["unique_graphs"]

    summary = driver.run(j, generator_factory=warmed_factory)

    assert summary.ok and summary.images == 10
    assert counters["stats"]["unique_graphs"] == graphs_before  # dynamo traced nothing new
    stats = verified_stats(j.out)
    assert len(stats) == 2 and all(s.seconds["warmup"] == 0.0 for s in stats)
    assert _WARMED["last"].warmup_seconds == warmup_before and _WARMED["last"].warnings == []
    # And the shapes are the job's: its conditions came at the working sizes the warm-up found.
    sizes = {
        Image.open(io.BytesIO(r["condition_image"]["bytes"])).size
        for p in verified_shards(j.out)
        for r in shards.read_shard(p, ["condition_image"]).to_pylist()
    }
    assert sizes == {(w, h) for w, h, _, _ in generated}


# ----------------------------------------------------------------------------- the cache folder

_DECODER_FACTORY = r"""
import json, sys, torch
from dataclasses import replace
torch.set_num_threads(1)
from difaug.diffusion.sampler import AuxGenerator
from difaug.diffusion.speed import batched_vae_decode, compile_pipeline

def decoder_factory(cfg, runtime):
    # The workers' generator with only the VAE decoder compiled by inductor (the UNet's and the
    # ControlNet's C++ builds take minutes here); the cache folder works the same for every part.
    gen = AuxGenerator.from_config(cfg, replace(runtime, compile="off"))
    batched_vae_decode(gen.pipe.vae, runtime.vae_batch, pad=True)
    compile_pipeline(gen.pipe, cache_dir=runtime.compile_cache_dir, parts=("decoder",))
    return AuxGenerator(gen.pipe, cfg, batch_size=runtime.batch_size, compile_cache_dir=runtime.compile_cache_dir)
"""

_WARM_UP = (
    _DECODER_FACTORY
    + r"""
from difaug.core.config import resolve_job
from difaug.run.warmup import warm_up
job = resolve_job(sys.argv[1], compile_cache_dir=sys.argv[2])
report = warm_up(job, generator_factory=decoder_factory)
print(json.dumps({"artifacts": report.artifacts_bytes, "folder": report.folder_bytes,
                  "shapes": [[s.kind, s.width, s.height, s.batch] for s in report.warmed]}))
"""
)

_WORKER = (
    _DECODER_FACTORY
    + r"""
from torch._dynamo.utils import counters
from difaug.core.config import resolve_job
from difaug.run.driver import run
# The job itself, as a fresh worker runs it: its shards compile on their device thread.
job = resolve_job(sys.argv[1], compile_cache_dir=sys.argv[2], cluster="sync")
summary = run(job, generator_factory=decoder_factory)
print(json.dumps({"ok": summary.ok, "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""
)


def _python(script: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_warm_up_fills_the_cache_folder_and_a_fresh_process_uses_it(
    tiny_models: Path, tmp_path: Path
) -> None:
    """A warm-up process compiles into a cache folder and saves the portable artefacts; the job,
    run in a second, fresh process given a folder that holds *only* that file (as on another
    machine of the same kind), finds every graph there (cache hits, no miss) instead of compiling."""
    m = _manifest(tmp_path / "d", [WIDE, WIDE])
    config = write_job_file(
        tmp_path,
        m,
        f"out: {tmp_path / 'out'}\nmodel: {tiny_models}\ncondition: seg\nnum_aux: 2\nsteps: 1\n"
        "resolution: 64\nscore: none\nexecution:\n  device: cpu\n  compile: 'on'\n  batch_size: 2\n"
        "  vae_batch: 2\n",
    )
    cache = tmp_path / "cache"

    warmed = _python(_WARM_UP, str(config), str(cache))

    assert warmed["shapes"] == [["generate", 128, 64, 2]]
    blob = cache / MEGA_CACHE_FILE
    assert blob.is_file() and blob.stat().st_size == warmed["artifacts"] > 0
    assert warmed["folder"] > warmed["artifacts"]  # inductor's own on-disk caches beside it
    elsewhere = tmp_path / "copied-cache"
    elsewhere.mkdir()
    shutil.copy(blob, elsewhere / MEGA_CACHE_FILE)

    worker = _python(_WORKER, str(config), str(elsewhere))

    # Every graph found, none compiled: the warm-up compiled with the options the job's own
    # device thread compiles with (inductor's config overrides are thread-local).
    assert worker["ok"] and worker["hits"] >= 1 and worker["misses"] == 0, worker
    assert [s.compile_warnings for s in verified_stats(tmp_path / "out")] == [()]


# ----------------------------------------------------------------------------- who compiles


def test_a_job_whose_workers_run_eager_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "d", [WIDE])
    cases = {
        "compile is off": ({"compile": "off"}, {}),
        "compile auto leaves a job of 2 images eager": ({"compile": "auto"}, {}),
        "compile auto compiles on CUDA only": ({"compile": "auto", "compile_min_images": 0}, {}),
        "offload runs eager": ({"compile": "auto", "compile_min_images": 0, "offload": True}, {}),
        "cache_interval > 1 runs eager": ({"compile": "on"}, {"cache_interval": 2}),
    }
    for reason, (runtime, cfg) in cases.items():
        j = job(m, tmp_path / "out", runtime={"device": "cpu", **runtime}, **cfg)
        with pytest.raises(WarmupError, match=reason):
            warm_up(j, generator_factory=_never_called)
    missing = job(tmp_path / "nope.csv", tmp_path / "out", runtime={"compile": "on", "device": "cpu"})
    with pytest.raises(Exception, match="manifest not found"):
        warm_up(missing, generator_factory=_never_called)
    assert not (tmp_path / "out").exists()


def _never_called(cfg: JobConfig, runtime: RuntimeConfig) -> AuxGenerator:
    raise AssertionError("no model may load for a job the warm-up refuses")


def test_generate_names_the_compile_cache_only_when_its_workers_compile(tmp_path: Path) -> None:
    """`PlanMade.compile_cache` (drawn at the end of `difaug generate`) and each shard's warm-up
    and worker in `ShardFinished`."""
    m = _manifest(tmp_path / "d", [WIDE, TALL])
    for runtime, expected in (
        ({"compile": "on"}, str(tmp_path / "on" / ".difaug-compile-cache")),
        ({"compile": "on", "compile_cache_dir": str(tmp_path / "shared")}, str(tmp_path / "shared")),
        ({"compile": "auto"}, ""),  # a short job on the CPU: eager
        ({"compile": "off"}, ""),
    ):
        out = tmp_path / ("on" if runtime["compile"] == "on" else "off")
        events: list = []
        j = job(m, out, runtime={"device": "cpu", **runtime}, overwrite=True)
        assert driver.run(j, generator_factory=sleep_factory(), on_event=events.append).ok
        (plan,) = [e for e in events if isinstance(e, driver.PlanMade)]
        assert plan.compile_cache == expected
        finished = [e for e in events if isinstance(e, driver.ShardFinished)]
        assert finished and all(e.worker.endswith(f":{os.getpid()}") for e in finished)
    j = job(m, tmp_path / "x", runtime={"cluster": "slurm", "compile": "auto", "compile_min_images": 0})
    assert compile_cache_of(j, 4, workers_here=False) == str(tmp_path / "x" / ".difaug-compile-cache")
