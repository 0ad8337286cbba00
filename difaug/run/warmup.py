"""`difaug models warmup`: compile every shape a job will use into its compile cache folder once,
so the N workers of a fresh cluster load compiled graphs instead of each compiling them cold.

A compiled generator (`difaug.diffusion.speed.compile_pipeline`, static shapes) compiles each new
shape at its first call. A job's shapes follow from its settings and its manifest:

- the generator batch: `batch_size` items of one working size (`core.geometry.working_size` of
  the support image at `resolution`; a compiled generator pads short batches to `batch_size`),
  which holds the UNet and ControlNet calls and the VAE decode in chunks of `vae_batch` (the last
  one padded too);
- the drift-scoring pass (`score: diffseg`): a generate batch's images at the size the scorer's
  UNet sees them (`DiffSeg.input_size` of the support size).

`job_shapes` finds them from the image headers alone. `warm_up` loads the generator as a worker
does (the job's factory and runtime, compile on, the cache folder), makes one call per shape with
the job's own prompts and a synthetic condition, scores that batch through the job's scorer
(`diffseg.for_generator`, as `ModelCache.drift_scorer` builds it) and saves the cache (`speed.save_compile_cache`). `eager_reason` says
why a job's workers would not compile: the warm-up refuses such a job, and `difaug generate`
names the compile cache only when its workers compile (`compile_cache_of`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from difaug.core.config import Job, JobConfig, compile_setting
from difaug.core.errors import DifaugError
from difaug.core.parallel import ProgressFn
from difaug.inputs.manifest import Sample
from difaug.run.model_cache import GeneratorFactory


class WarmupError(DifaugError):
    """A job whose workers would not compile (nothing to warm up), or a compilation that failed;
    the message says which setting and what to do."""


@dataclass(frozen=True)
class SupportSize:
    """A support image size (as its header says) and how many of the job's rows have it."""

    width: int
    height: int
    rows: int


@dataclass(frozen=True)
class WorkingSize:
    """One working size of the job's rows: the size of their conditions and generated images."""

    width: int
    height: int
    supports: tuple[SupportSize, ...]  # the support sizes that come to it, first seen first
    sample: Sample  # the first row at this size: the warm-up's prompt and class

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.supports)


@dataclass(frozen=True)
class JobShapes:
    """The generator shapes a job will use: one batch of `batch` items per working size."""

    sizes: tuple[WorkingSize, ...]  # the most rows first
    batch: int  # items per generator call (a compiled generator pads to it)
    vae_chunk: int  # latents per VAE decode call (padded to it)
    rows: int  # rows the job plans (its `limit` applied)
    skipped: tuple[tuple[int, str], ...]  # (row, why): rows the job cannot generate, left out


@dataclass(frozen=True)
class WarmupStarted:
    """The shapes are known and the cache folder chosen; the models load next."""

    shapes: JobShapes
    cache_dir: str
    device: str
    environment: str  # what a cache is only valid for (`compile_environment`)


@dataclass(frozen=True)
class ShapeWarmed:
    """One call of the warm-up. `kind` "generate": `width`×`height` is the working size; "score":
    the size DiffSeg's UNet pass sees the batch at."""

    kind: str
    width: int
    height: int
    batch: int
    rows: int  # manifest rows whose batches have this shape
    seconds: float  # the call, compilation (or loading it from the cache) included


WarmupEvent = WarmupStarted | ShapeWarmed


@dataclass(frozen=True)
class WarmupReport:
    """What `warm_up` did: every call, the models' load time, and the cache's size."""

    cache_dir: str
    shapes: JobShapes
    warmed: tuple[ShapeWarmed, ...]
    load_seconds: float
    artifacts_bytes: int  # the portable artefacts file (`speed.MEGA_CACHE_FILE`)
    folder_bytes: int  # the whole folder: inductor's on-disk caches and the artefacts file
    warnings: tuple[str, ...]  # the generator's (prompts cut, …)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.warmed)


# ----------------------------------------------------------------------------- which jobs compile


def eager_reason(job: Job, planned_images: int, device: str | None) -> str:
    """Why the workers of `job` run eager, and what to set instead ('' when they compile, or may:
    `device` None = the workers' device is not known here). `planned_images`: the images of the
    plan (`compile: auto` leaves a job shorter than `compile_min_images` eager)."""
    from difaug.diffusion.sampler import compile_skipped
    from difaug.diffusion.speed import decide_compile
    from difaug.run.compile_policy import runtime_for_plan

    rt = job.runtime
    setting = compile_setting(rt.compile)
    if setting == "off":
        return "compile is off; set compile: on (--compile)"
    if compile_setting(runtime_for_plan(rt, job.out, planned_images).compile) == "off":
        return (
            f"compile auto leaves a job of {planned_images} images eager (compile_min_images is "
            f"{rt.compile_min_images}); set compile: on (--compile) or a lower --compile-min-images"
        )
    if rt.offload:
        return "offload runs eager (compile and offload cannot be combined); set offload: false to compile"
    skipped = compile_skipped(job.config)
    if skipped:
        return f"{skipped}; set cache_interval: 1 to compile"
    if device is not None and not decide_compile(setting, device, None, rt.compile_min_images):
        return (
            f"compile auto compiles on CUDA only and the device here is {device}; run this where the "
            "workers run (a GPU node), or set compile: on (--compile)"
        )
    return ""


def compile_cache_of(job: Job, planned_images: int, *, workers_here: bool) -> str:
    """The compile cache folder `job`'s workers use, or '' when they run eager (`eager_reason`):
    what `difaug generate` names. `workers_here`: the workers run on this machine, so their
    device is this one's (else an `auto` device is theirs to resolve, and may be a GPU)."""
    from difaug.core.device import resolve_device
    from difaug.run.compile_policy import runtime_for_plan

    if compile_setting(job.runtime.compile) == "off":
        return ""  # (before resolving the device: an eager job does not import torch here)
    device = None
    if workers_here:
        try:
            device = resolve_device(job.runtime.device)
        except DifaugError:  # a CUDA device this machine lacks: the workers' own refusal says it
            return ""
    if eager_reason(job, planned_images, device):
        return ""
    return runtime_for_plan(job.runtime, job.out, planned_images).compile_cache_dir


def compile_environment(device: str) -> str:
    """What a compile cache is valid for: torch (and its CUDA, triton) version and the GPU kind.
    A cache made with another is not used (each entry's key holds them): it costs a recompile."""
    import torch

    parts = [f"torch {torch.__version__}"]
    if device.startswith("cuda"):
        parts.append(f"CUDA {torch.version.cuda}")
        try:
            import triton

            parts.append(f"triton {triton.__version__}")
        except ImportError:
            pass
        major, minor = torch.cuda.get_device_capability(device)
        parts.append(f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})")
    else:  # inductor's C++ kernels are built for the CPU's vector instructions
        parts.append(f"CPU {torch.backends.cpu.get_cpu_capability()}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the job's shapes


def job_shapes(
    job: Job, samples: Sequence[Sample], *, progress: ProgressFn | None = None, workers: int | None = None
) -> JobShapes:
    """The generator shapes of `job` over `samples` (the manifest's rows; the job's `limit` is
    applied here), from the image files alone (`image_size`: header and end marker). Rows whose
    file cannot be used or whose size the job refuses (`SizeLimits`) are left out with why: the job
    records them as failures."""
    from difaug.core.geometry import working_size
    from difaug.core.parallel import parallel_map
    from difaug.inputs.manifest import SizeLimits, image_size

    rows = [s for s in samples if not job.limit or s.row <= job.limit]
    paths = list(dict.fromkeys(s.image for s in rows))
    read = parallel_map(image_size, paths, workers=workers, progress=progress, label="reading headers")
    headers = dict(zip(paths, read, strict=True))
    limits = SizeLimits.for_job(job)
    by_size: dict[tuple[int, int], dict[tuple[int, int], list[Sample]]] = {}
    skipped: list[tuple[int, str]] = []
    for s in rows:
        got = headers[s.image]
        problem = got if isinstance(got, str) else limits.problem(*got)
        if problem:
            skipped.append((s.row, problem))
            continue
        by_size.setdefault(working_size(*got, job.config.resolution), {}).setdefault(got, []).append(s)
    sizes = [
        WorkingSize(
            w,
            h,
            tuple(SupportSize(*support, len(r)) for support, r in found.items()),
            next(iter(found.values()))[0],
        )
        for (w, h), found in by_size.items()
    ]
    sizes.sort(key=lambda size: -size.rows)  # stable: first seen first among equals
    return JobShapes(tuple(sizes), job.runtime.batch_size, job.runtime.vae_batch, len(rows), tuple(skipped))


# ----------------------------------------------------------------------------- the warm-up


def warm_up(
    job: Job,
    *,
    generator_factory: GeneratorFactory | None = None,
    on_event: Callable[[WarmupEvent], None] | None = None,
    progress: ProgressFn | None = None,
) -> WarmupReport:
    """Compile every shape `job` will use into its compile cache folder (`compile_cache_dir`, or
    the run's `OUT/.difaug-compile-cache`) and save it there.

    Raises, before any model loads: `ManifestError` (no manifest), `WarmupError` when the job's
    workers would not compile (`eager_reason`) or no row can be generated. After: `WarmupError`
    when a compilation fails (the generator then runs eager, so nothing would be cached).
    `generator_factory`: as `difaug.run.driver.run` takes it (default: the workers' own,
    `AuxGenerator.from_config`); `on_event` gets `WarmupStarted`, then each `ShapeWarmed`."""
    from difaug.core.contracts import check_contract
    from difaug.core.device import resolve_device
    from difaug.diffusion import diffseg
    from difaug.diffusion.contracts import Generator
    from difaug.diffusion.speed import is_compiled, save_compile_cache
    from difaug.inputs.manifest import read_manifest
    from difaug.run.compile_policy import runtime_for_plan
    from difaug.run.model_cache import default_generator_factory
    from difaug.run.plan import manifest_rows
    from difaug.run.shard_process import shard_process

    emit = on_event or (lambda event: None)
    manifest = read_manifest(job.manifest)
    rows = manifest_rows(manifest)
    planned = (min(rows, job.limit) if job.limit else rows) * job.config.num_aux
    device = resolve_device(job.runtime.device)
    reason = eager_reason(job, planned, device)
    if reason:
        raise WarmupError(f"nothing to warm up, this job's workers run eager: {reason}")
    shapes = job_shapes(job, manifest.samples, progress=progress)
    if not shapes.sizes:
        why = f"e.g. row {shapes.skipped[0][0]}: {shapes.skipped[0][1]}" if shapes.skipped else "no rows"
        raise WarmupError(f"{job.manifest}: no row of this job can be generated ({why}); nothing to warm up")
    runtime = replace(runtime_for_plan(job.runtime, job.out, planned), compile="on")
    emit(WarmupStarted(shapes, runtime.compile_cache_dir, device, compile_environment(device)))

    t0 = time.perf_counter()
    generator: Any = (generator_factory or default_generator_factory)(job.config, runtime)
    check_contract(generator, Generator, "the generator factory")
    load_seconds = time.perf_counter() - t0
    if getattr(generator, "pipe", None) is None or not is_compiled(generator.pipe):
        notes = "; ".join(getattr(generator, "warnings", ()))
        raise WarmupError(
            f"the job's generator was not compiled{f' ({notes})' if notes else ''}; nothing to warm up"
        )
    # The job's scorer, built as a shard task builds it (`ModelCache.drift_scorer`).
    scorer = _Scorer(diffseg.for_generator(generator, job.config))
    warmed: list[ShapeWarmed] = []
    # torch's thread count as a shard pins it: inductor's CPU kernels are compiled for (and
    # cached under) the thread count of the process that compiles them.
    with shard_process().torch_threads.pinned(job.runtime.threads_per_worker):
        try:
            for size in shapes.sizes:
                warmed += _warm_size(generator, job.config, size, shapes.batch, scorer, emit)
        finally:  # an interrupted or failed warm-up keeps what it compiled
            saved = save_compile_cache(runtime.compile_cache_dir)
    return WarmupReport(
        cache_dir=runtime.compile_cache_dir,
        shapes=shapes,
        warmed=tuple(warmed),
        load_seconds=load_seconds,
        artifacts_bytes=saved,
        folder_bytes=folder_bytes(runtime.compile_cache_dir),
        warnings=tuple(getattr(generator, "warnings", ())),
    )


@dataclass
class _Scorer:
    """The job's DiffSeg scorer (None when it does not score) and the sizes it has warmed."""

    model: Any
    done: set[tuple[int, int]] = field(default_factory=set)  # sizes warmed (two working sizes may share one)


def _warm_size(
    generator: Any,
    cfg: JobConfig,
    size: WorkingSize,
    batch: int,
    scorer: _Scorer,
    emit: Callable[[WarmupEvent], None],
) -> list[ShapeWarmed]:
    """One generate batch at `size`, then one scoring call per size the scorer sees its supports
    at, on that batch's images resized to the support size as the job's are."""
    import numpy as np

    from difaug.core import imageio
    from difaug.diffusion.sampler import make_work_items
    from difaug.diffusion.speed import is_compiled

    w, h = size.width, size.height
    condition = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    first = size.supports[0]
    # `batch` items with the row's own prompt, resized back to its support size.
    items = make_work_items(size.sample, condition, (first.width, first.height), replace(cfg, num_aux=batch))
    before = len(generator.warnings)
    t0 = time.perf_counter()
    results = generator.generate(items)
    out = [ShapeWarmed("generate", w, h, batch, size.rows, time.perf_counter() - t0)]
    if not is_compiled(generator.pipe):  # the compiler failed: the generator fell back to eager
        _failed(generator, before, f"generating at {w}×{h}")
    emit(out[-1])
    if scorer.model is None:
        return out
    by_input: dict[tuple[int, int], list[SupportSize]] = {}
    for support in size.supports:
        by_input.setdefault(scorer.model.input_size(support.width, support.height), []).append(support)
    for (sw, sh), supports in by_input.items():
        if (sw, sh) in scorer.done:
            continue
        scorer.done.add((sw, sh))
        sup = supports[0]
        images = [imageio.resize(r.image, (sup.width, sup.height)) for r in results]
        mask = np.zeros((sup.height, sup.width), np.uint8)
        mask[sup.height // 4 : sup.height - sup.height // 4, sup.width // 4 : sup.width - sup.width // 4] = (
            size.sample.class_id
        )
        before = len(generator.warnings)
        t0 = time.perf_counter()
        scorer.model.drift_scores(images, [mask] * len(images), [size.sample.class_id] * len(images))
        out.append(
            ShapeWarmed("score", sw, sh, batch, sum(s.rows for s in supports), time.perf_counter() - t0)
        )
        if len(generator.warnings) > before:  # a compiled scoring pass reports its failure there
            _failed(generator, before, f"scoring at {sw}×{sh}")
        emit(out[-1])
    return out


def _failed(generator: Any, before: int, what: str) -> None:
    new = "; ".join(generator.warnings[before:]) or "torch.compile failed"
    raise WarmupError(f"{what}: {new}; the compile cache holds only the shapes before it")


def folder_bytes(cache_dir: str) -> int:
    """Bytes of every file under the cache folder (0 when there is none)."""
    root = Path(cache_dir).expanduser()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
