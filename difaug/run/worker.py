"""The shard task: what one Dask task does for one shard, on whichever worker runs it.

`run_shard` reads and decodes the shard's samples, derives their conditions, generates the
auxiliary images in batches, encodes them and writes the shard atomically, then its stats marker.
Three stages overlap through bounded queues so the device never waits on the host:

    stage 1 (thread)       read + decode + condition  ──► items queue ─┐
    stage 2 (device thr.)  generator batches, bucketed by shape       ◄┘ ──► results queue ─┐
    stage 3 (2 threads)    encode PNG/JPEG + build rows                                    ◄┘

A process keeps two shard tasks in flight (`MAX_SHARDS_IN_FLIGHT`): the next shard's stage 1 runs
while this one's last batches generate, and this one's last encodes and its write overlap the next
one's stage 2. One shard at a time goes through stage 1 (a lock), and stage 2 runs on the
process's one device thread, one shard after the other.
A row whose *input* is at fault (missing/undecodable file, empty mask, …: `INPUT_ERRORS`) becomes
a recorded failure and the rest of the shard continues; any other error (the generator's, CUDA out
of memory, …) fails the task, so Dask retries it and no marker records a half-done shard.

Models are loaded once per worker process (`_MODEL_CACHE`) from picklable factories and never
travel through the task graph. The task uses them only through their contracts (`Generator`,
`ConditionMaker`); stand-ins for tests and benchmarks are in `difaug.testing.standins`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import queue
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from difaug.conditions import ConditionMaker
from difaug.core import imageio
from difaug.core.config import Job, JobConfig, RuntimeConfig, model_settings
from difaug.core.contracts import check_contract
from difaug.diffusion.contracts import Generator, ReportsWarmup
from difaug.inputs.manifest import Sample
from difaug.run import rundir, shards
from difaug.run.rundir import Failure, ShardRange, ShardStats

GeneratorFactory = Callable[[JobConfig, RuntimeConfig], Generator]
ConditionFactory = Callable[[JobConfig, RuntimeConfig], ConditionMaker]
ProgressHook = Callable[[int, int], None]  # (shard index, images generated so far in this attempt)

PROGRESS_TOPIC = "difaug-progress"
_DONE = object()  # end-of-stream sentinel in the stage queues
# PNG encoding (the largest host cost per image) releases the GIL: several encoders keep up with a
# device that is faster than one core's encoding (at 40 img/s, ~12 ms/img of lossless PNG at 512²
# needs about half a core; 2 threads at least). Row order does not depend on them (rows are sorted).
ENCODE_THREADS = 2  # the minimum; `RuntimeConfig.encode_threads` 0 = stage_threads() picks


def stage_threads(setting: int, minimum: int = 2, maximum: int = 8) -> int:
    """Threads for a host stage: `setting` when > 0, else from the cores this process may use
    (all of them share one GPU worker's host work: the task thread mostly waits on the device)."""
    if setting > 0:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(minimum, min(maximum, cores))


# What a bad *input* raises (ImageReadError, ConditionError, ConfigError are ValueErrors): recorded
# as that row's failure. Anything else (CUDA out of memory, a bug) is the machine's or the code's
# fault: it fails the task, Dask retries it, and no marker claims the rows failed for good.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


@dataclass(frozen=True)
class ShardSpec:
    """One shard's share of the plan: small, picklable, no images."""

    shard: ShardRange
    samples: tuple[Sample, ...]  # rows of the range to generate
    failures: tuple[Failure, ...]  # rows of the range that failed before the task (manifest/validate)
    out: str
    plan_hash: str


def failure(sample: Sample | None, stage: str, reason: str, row: int | None = None) -> Failure:
    """The failure of `sample` (or of manifest `row` when there is no sample)."""
    return Failure(
        row if row is not None else (sample.row if sample else 0),
        sample.sample_id if sample else "",
        stage,
        reason,
    )


# ----------------------------------------------------------------------------- model factories


def default_generator_factory(cfg: JobConfig, runtime: RuntimeConfig) -> Generator:
    from difaug.diffusion.sampler import AuxGenerator

    return AuxGenerator.from_config(cfg, runtime)


def default_condition_factory(cfg: JobConfig, runtime: RuntimeConfig) -> ConditionMaker:
    from difaug.conditions import make_condition
    from difaug.diffusion.models import ModelSpec

    return make_condition(
        cfg.condition,
        style=cfg.condition_style,
        resolution=cfg.resolution,
        # The job's HED weights as named (the `model` bundle's unless `hed_weights` overrides
        # them); difaug.conditions.hed.resolve_hed_weights turns the name into a local file.
        hed_weights=ModelSpec.from_config(cfg).hed_weights,
        device=None if runtime.device == "auto" else runtime.device,
        dtype=None if runtime.dtype == "auto" else runtime.dtype,
        batch_size=runtime.hed_batch_size,
        detect_resolution=cfg.detect_resolution,
    )


_MODEL_CACHE: dict[str, tuple[Generator, ConditionMaker]] = {}
# Guards _MODEL_CACHE and _MODELS_IN_USE; a shard waits on it for another job's shards to finish.
_MODELS = threading.Condition()
_MODELS_IN_USE: Counter[str] = Counter()  # model-cache key → shards of this process using it

# Two shards in flight per process, whatever the worker's thread count: while one finishes on the
# host (last encodes, Parquet write + hash + fsync, marker) the other prepares and generates, so the
# device does not wait at a shard's head or tail. Two bound memory at two shards' queues and rows.
MAX_SHARDS_IN_FLIGHT = 2
_SHARD_SLOTS = threading.BoundedSemaphore(MAX_SHARDS_IN_FLIGHT)
# The stages that must not mix two shards: the prepare stage (decode + condition: the condition
# model and its `fallbacks` counter) holds _FRONT_LOCK until it has queued its last item; the
# generate stage (first batch to last, drift scoring included: the device and the generator's
# warm-up counters) runs on the process's one device thread (`_device_thread`), one shard after
# the other. A shard takes the front before the device, so shard B's prepare overlaps shard A's
# last batches and A's write overlaps B's generation, and neither ever waits on the other's turn.
_FRONT_LOCK = threading.Lock()
_DEVICE: tuple[int, ThreadPoolExecutor] | None = None  # (pid, executor): a forked child makes its own
_DEVICE_INIT = threading.Lock()


def _device_thread() -> ThreadPoolExecutor:
    """The one thread of this process that runs generate stages: the device is used by one shard
    at a time, always from the same thread (torch.compile's CUDA-graph trees are per thread, so a
    second thread would record and hold a second set of graphs)."""
    global _DEVICE
    with _DEVICE_INIT:
        if _DEVICE is None or _DEVICE[0] != os.getpid():
            _DEVICE = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="difaug-device"))
        return _DEVICE[1]


def factory_key(generator_factory: GeneratorFactory, condition_factory: ConditionFactory, job: Job) -> str:
    """What identifies a loaded model set: the factories (by value), the job config and the
    runtime settings that change how models load (`model_settings`). Raises TypeError for
    unpicklable factories."""
    try:
        blob = pickle.dumps((generator_factory, condition_factory, job.config, model_settings(job.runtime)))
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(
            "generator_factory and condition_factory must be picklable (a module-level function or "
            f"functools.partial of one), since Dask ships them to the workers: {e}"
        ) from e
    return hashlib.sha256(blob).hexdigest()


@contextlib.contextmanager
def load_models(
    job: Job, generator_factory: GeneratorFactory, condition_factory: ConditionFactory
) -> Iterator[tuple[Generator, ConditionMaker, float]]:
    """`(generator, condition, seconds spent loading)`, in use until the block ends; loads once
    per process and key.

    A process holds one model set: another job's key replaces it, but only once no shard of the
    old key is in flight (the new job's shard waits), so models a running shard uses are never
    freed under it. Shards of one key never wait here."""
    key = factory_key(generator_factory, condition_factory, job)
    with _MODELS:
        _MODELS.wait_for(lambda: all(k == key for k in _MODELS_IN_USE))
        if key in _MODEL_CACHE:
            gen, cond = _MODEL_CACHE[key]
            load_s = 0.0
        else:
            _MODEL_CACHE.clear()  # a worker holds one model set: a new job config replaces the old one
            _free_device_memory()
            t0 = time.perf_counter()
            gen = generator_factory(job.config, job.runtime)
            check_contract(gen, Generator, "the generator factory")
            cond = condition_factory(job.config, job.runtime)
            check_contract(cond, ConditionMaker, "the condition factory")
            _MODEL_CACHE[key] = (gen, cond)
            load_s = time.perf_counter() - t0
        _MODELS_IN_USE[key] += 1
    try:
        yield gen, cond, load_s
    finally:
        with _MODELS:
            _MODELS_IN_USE[key] -= 1
            if not _MODELS_IN_USE[key]:
                del _MODELS_IN_USE[key]
            _MODELS.notify_all()


def _drift_scorer(generator: Generator, cfg: JobConfig) -> Callable[..., list] | None:
    """`(images, masks, class_ids) -> [DriftScore]` on the generator's loaded UNet (built once per
    process), or None when the job does not score or the generator is a stand-in."""
    from difaug.diffusion import diffseg

    scorer = diffseg.for_generator(generator, cfg)
    return None if scorer is None else scorer.score


def _free_device_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _TorchThreads:
    """torch's intra-op thread count is process-wide and two shards may be in flight: the first
    shard in sets it, the last one out restores it, and a shard that wants another count waits
    until the others are done (the count reaches the bytes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._count = 0
        self._before = 0

    @contextlib.contextmanager
    def pinned(self, n: int) -> Iterator[bool]:
        """Yields whether the count was pinned (False when torch is not imported)."""
        torch = sys.modules.get("torch")
        if torch is None:
            yield False
            return
        n = max(1, n)
        with self._cond:
            self._cond.wait_for(lambda: self._users == 0 or self._count == n)
            if self._users == 0:
                self._before, self._count = torch.get_num_threads(), n
                torch.set_num_threads(n)
            self._users += 1
        try:
            yield True
        finally:
            with self._cond:
                self._users -= 1
                if self._users == 0:
                    torch.set_num_threads(self._before)
                    self._cond.notify_all()


_TORCH_THREADS = _TorchThreads()


def cpu_threads(n: int) -> contextlib.AbstractContextManager[bool]:
    """Pin torch's intra-op threads for the task: the same count in every cluster mode is what
    makes `sync` and `local` give identical bytes (Dask workers start with OMP_NUM_THREADS=1).
    Yields whether it pinned them (not when torch is not imported)."""
    return _TORCH_THREADS.pinned(n)


# ----------------------------------------------------------------------------- the shard task


@dataclass
class _ShardState:
    """What the three stages share. Lists/dicts are only appended to (safe under the GIL)."""

    failures: list[Failure] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    failed_ids: set[str] = field(default_factory=set)
    busy: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    # Drift scoring (difaug.diffusion.diffseg): support masks by sample id, scores by row key; masks are kept
    # only when the job scores (None otherwise).
    masks: dict[str, np.ndarray] | None = None
    scores: dict[str, dict] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by the caller to abandon the shard (the in-process runner, interrupted): stages wind down.
    cancel: threading.Event | None = None
    halted: bool = False  # a stage wound down before its end (stop or cancel)
    # Set once the prepare stage holds the front lock: only then may the task take the device
    # (front before device in every shard, so no two shards wait on each other).
    front_taken: threading.Event = field(default_factory=threading.Event)
    fallbacks: Counter[str] = field(default_factory=Counter)  # this shard's, counted under the front lock

    def stopped(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    def fail(self, sample: Sample, stage: str, reason: str) -> None:
        with self.lock:
            if sample.sample_id not in self.failed_ids:
                self.failed_ids.add(sample.sample_id)
                self.failures.append(failure(sample, stage, reason))

    def add_time(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.busy[stage] = self.busy.get(stage, 0.0) + seconds


def _put(q: queue.Queue, obj: Any, state: _ShardState) -> None:
    """A blocking put that gives up once another stage has failed (no deadlock on a full queue)."""
    while not state.stopped():
        try:
            q.put(obj, timeout=0.1)
            return
        except queue.Full:
            continue
    state.halted = True
    raise _Stopped


def _get(q: queue.Queue, state: _ShardState) -> Any:
    while not state.stopped():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    state.halted = True
    raise _Stopped


def _wait(event: threading.Event, state: _ShardState) -> None:
    while not event.wait(timeout=0.1):
        if state.stopped():
            state.halted = True
            raise _Stopped


class _Stopped(Exception):
    """Another stage failed; this one winds down."""


def _stage_thread(name: str, fn: Callable[[], None], state: _ShardState) -> threading.Thread:
    def body() -> None:
        try:
            fn()
        except _Stopped:
            pass
        except BaseException as e:  # handed to the task thread, which re-raises it
            state.error = state.error or e
            state.stop.set()

    return threading.Thread(target=body, name=f"difaug-{name}", daemon=True)


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 500 else text[:497] + "..."


def _decode(sample: Sample, state: _ShardState) -> Any | None:
    from difaug.conditions import load_input

    t0 = time.perf_counter()
    try:
        return load_input(sample)
    except INPUT_ERRORS as e:
        state.fail(sample, "read", _short(e))
        return None
    finally:
        state.add_time("read", time.perf_counter() - t0)


def _conditions(
    condition: ConditionMaker, inputs: list[Any], state: _ShardState
) -> list[tuple[Any, np.ndarray]]:
    """Conditions for a batch; an input error is recorded against its own row only."""
    from difaug.conditions import conditions_or_errors

    t0 = time.perf_counter()
    try:
        out = []
        for inp, cond in zip(inputs, conditions_or_errors(condition, inputs, INPUT_ERRORS), strict=True):
            if isinstance(cond, BaseException):
                state.fail(inp.sample, "condition", _short(cond))
            else:
                out.append((inp, cond))
        return out
    finally:
        state.add_time("condition", time.perf_counter() - t0)


def _prepare_stage(
    samples: Sequence[Sample],
    condition: ConditionMaker,
    cfg: JobConfig,
    chunk: int,
    items_q: queue.Queue,
    state: _ShardState,
    decode_threads: int = 1,
) -> Callable[[], None]:
    from difaug.diffusion.sampler import make_work_items

    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]

    def run() -> None:
        # One shard's prepare stage at a time per process (`_FRONT_LOCK`), held until its last
        # item is queued: the condition's fallback counter is this shard's alone in between.
        with _FRONT_LOCK:
            state.front_taken.set()
            before = Counter(condition.fallbacks)
            try:
                _prepare_all()
                _put(items_q, _DONE, state)
            finally:
                state.fallbacks = Counter(condition.fallbacks) - before

    def _prepare_all() -> None:
        # Decoding (PIL/OpenCV release the GIL) runs on `decode_threads`, up to two chunks ahead
        # of the condition step; results are taken in sample order, so timing never reaches
        # the items' order, and at most three chunks of decoded images are held at once.
        pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="difaug-decode")
        try:
            ahead = [[pool.submit(_decode, s, state) for s in c] for c in chunks[:2]]
            for i in range(len(chunks)):
                futures = ahead.pop(0)
                if i + 2 < len(chunks):
                    ahead.append([pool.submit(_decode, s, state) for s in chunks[i + 2]])
                inputs = [x for x in (f.result() for f in futures) if x is not None]
                if inputs:
                    _prepare_chunk(inputs)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare_chunk(inputs: list[Any]) -> None:
        for inp, cond in _conditions(condition, inputs, state):
            h, w = inp.image.shape[:2]
            try:
                items = make_work_items(inp.sample, cond, (w, h), cfg)
            except INPUT_ERRORS as e:
                state.fail(inp.sample, "condition", _short(e))
                continue
            if state.masks is not None:
                state.masks[inp.sample.sample_id] = inp.mask
            for item in items:
                _put(items_q, (inp.sample, item), state)

    return run


def _generate_stage(
    generator: Generator,
    batch_size: int,
    items_q: queue.Queue,
    results_q: queue.Queue,
    state: _ShardState,
    report: Callable[[int], None],
    score: Callable[..., list] | None = None,
    encoders: int = ENCODE_THREADS,
) -> None:
    """Bucket items by condition shape (`ShapeBuckets`); run a batch when a bucket fills, the
    rest at the end.

    Batches depend only on the shard's contents and `batch_size`, never on timing, so a shard's
    images are the same on every run, worker and retry."""
    from difaug.diffusion.sampler import ShapeBuckets

    buckets: ShapeBuckets[tuple[Sample, Any]] = ShapeBuckets(batch_size)
    done = 0

    def flush(batch: list[tuple[Sample, Any]]) -> None:
        nonlocal done
        t0 = time.perf_counter()
        # generate() rather than run_batch(): the generator may pad short batches (torch.compile).
        results = generator.generate([item for _, item in batch])
        state.add_time("generate", time.perf_counter() - t0)
        if len(results) != len(batch):
            raise RuntimeError(f"generator returned {len(results)} images for a batch of {len(batch)}")
        if score is not None and state.masks is not None:  # on the device, right after the batch
            t0 = time.perf_counter()
            drift = score(
                [r.image for r in results],
                [state.masks[s.sample_id] for s, _ in batch],
                [s.class_id for s, _ in batch],
            )
            state.scores.update((r.item.key, d.columns()) for r, d in zip(results, drift, strict=True))
            state.add_time("score", time.perf_counter() - t0)
        for (sample, _), res in zip(batch, results, strict=True):
            _put(results_q, (sample, res), state)
        done += len(batch)
        report(done)

    while True:
        got = _get(items_q, state)
        if got is _DONE:
            break
        full = buckets.add(tuple(got[1].condition.shape), got)
        if full is not None:
            flush(full)
    for batch in buckets.drain():
        flush(batch)
    for _ in range(encoders):
        _put(results_q, _DONE, state)


def _encode_stage(
    cfg: JobConfig, provenance: dict, results_q: queue.Queue, state: _ShardState
) -> Callable[[], None]:
    cond_png: dict[str, bytes] = {}

    def run() -> None:
        while True:
            got = _get(results_q, state)
            if got is _DONE:
                return
            sample, res = got
            if sample.sample_id in state.failed_ids:
                continue
            t0 = time.perf_counter()
            try:
                state.rows.append(
                    _row(sample, res, cfg, provenance, cond_png, state.scores.get(res.item.key))
                )
            except INPUT_ERRORS as e:
                state.fail(sample, "encode", _short(e))
            state.add_time("encode", time.perf_counter() - t0)

    return run


def _row(
    sample: Sample,
    res: Any,
    cfg: JobConfig,
    prov: dict,
    cond_png: dict[str, bytes],
    scores: dict | None = None,
) -> dict:
    item = res.item
    if sample.sample_id not in cond_png:  # one condition per sample, shared by its X rows
        cond_png[sample.sample_id] = imageio.encode_png(item.condition)
    w, h = item.out_size
    if res.image.shape[:2] != (h, w):
        raise ValueError(f"generator returned {res.image.shape[1]}×{res.image.shape[0]}, expected {w}×{h}")
    return shards.make_row(
        sample,
        cfg,
        aux_index=item.aux_index,
        seed=item.seed,
        prompt=item.prompt,
        negative_prompt=item.negative_prompt,
        size=(w, h),
        condition_png=cond_png[sample.sample_id],
        aux_bytes=encode_aux(res.image, cfg),
        provenance=prov,
        scores=scores,
    )


def encode_aux(image: np.ndarray, cfg: JobConfig) -> bytes:
    """The aux image's bytes. PNG is lossless whatever the settings, so pick the cheapest that
    keeps the size: zlib level 1 with the Up filter on every row. Measured on the demo photos at
    512² with OpenCV 5 (`benchmarks/encode_formats.py`): ~8 ms CPU and 233 kB per image, against
    ~12 ms and 267 kB for Huffman-only + Paeth and ~17 ms for PIL's level 1. PNG encoding is the
    largest host cost per image."""
    if cfg.image_format != "png":
        return imageio.encode(image, cfg.image_format, cfg.jpeg_quality)
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11; older ones choose filters adaptively
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]), params)  # OpenCV is BGR
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def _progress_reporter(index: int, hook: ProgressHook | None) -> Callable[[int], None]:
    """Per-batch progress: to the driver's hook in-process, else as a Dask worker event."""
    if hook is not None:
        return lambda n: hook(index, n)
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda n: None
    return lambda n: worker.log_event(PROGRESS_TOPIC, {"shard": index, "images": n})


@dataclass(frozen=True)
class StageSizes:
    """How much the stages of one shard task hold, all derived from the generator's batch size."""

    prepare_chunk: int  # samples decoded and conditioned per step of the prepare stage
    queue_depth: int  # items (and results) each queue between two stages holds at most


def stage_sizes(batch_size: int, num_aux: int) -> StageSizes:
    """The prepare chunk and the queue depth for a generator batch of `batch_size`.

    One chunk of samples makes about one device batch of items (`num_aux` items per sample; at
    least 2 samples, so a large `num_aux` still overlaps decoding); each queue holds two device
    batches, so the device always finds its next batch ready while memory stays bounded by the
    batch size rather than the shard size."""
    return StageSizes(prepare_chunk=max(2, math.ceil(batch_size / num_aux)), queue_depth=2 * batch_size)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_shard(
    spec: ShardSpec,
    job: Job,
    generator_factory: GeneratorFactory | None = None,
    condition_factory: ConditionFactory | None = None,
    progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
) -> ShardStats:
    """Generate one shard, write it and its marker; return the marker.

    At most `MAX_SHARDS_IN_FLIGHT` (2) shards per process, however many threads the worker has (a
    plain `dask worker`, a SLURM job with `cores: 8`): their prepare stages take turns
    (`_FRONT_LOCK`), and so do their generate stages (on the one device thread), so one shard at a
    time uses the cached pipeline while the other prepares or writes. Setting `cancel` (the in-process
    runner, interrupted) makes the stages wind down and the task raise `ShardCancelled`."""
    with _SHARD_SLOTS:
        return _run_shard(spec, job, generator_factory, condition_factory, progress, cancel)


class ShardCancelled(RuntimeError):
    """The shard was abandoned through `run_shard(cancel=...)`; nothing of it was written."""


def _run_shard(
    spec: ShardSpec,
    job: Job,
    generator_factory: GeneratorFactory | None,
    condition_factory: ConditionFactory | None,
    progress: ProgressHook | None,
    cancel: threading.Event | None = None,
) -> ShardStats:
    started, t0 = _now(), time.perf_counter()
    rundir.probe_writable(spec.out)  # a read-only or full OUT fails now, not after the shard's work
    gen_f = generator_factory or default_generator_factory
    cond_f = condition_factory or default_condition_factory
    cfg, rt = job.config, job.runtime
    with load_models(job, gen_f, cond_f) as (generator, condition, load_s):
        cpu0 = time.process_time()  # after loading: the shard's own host work
        state = _ShardState(failures=list(spec.failures), cancel=cancel)
        with _MODELS:  # built once per process and generator (diffseg.for_generator)
            score = _drift_scorer(generator, cfg)
        state.masks = {} if score is not None else None
        with cpu_threads(rt.threads_per_worker) as pinned:
            torch_threads = rt.threads_per_worker if pinned else 0
            warmup = _run_stages(spec, job, generator, condition, state, score, progress, torch_threads)
        if state.error is not None:
            raise state.error
        if state.halted:
            raise ShardCancelled(f"shard {spec.shard.index}: cancelled before its end; nothing written")
        fallbacks = state.fallbacks
        state.add_time("warmup", warmup[0])
        return _finish(spec, cfg, state, dict(fallbacks), started, (t0, cpu0), load_s, warmup[1])


def _run_stages(
    spec: ShardSpec,
    job: Job,
    generator: Generator,
    condition: ConditionMaker,
    state: _ShardState,
    score: Callable[..., list] | None,
    progress: ProgressHook | None,
    torch_threads: int,
) -> tuple[float, list[str]]:
    """Run the three stages of one shard; return the generator's warm-up seconds and compile
    warnings of this shard (counted on the device thread, so another shard's never mix in).
    `torch_threads`: torch's thread count for the device thread (0: leave it, nothing was pinned).
    A stage's error is left in `state.error`; every thread is joined and every lock released."""
    cfg, rt = job.config, job.runtime
    batch_size = generator.batch_size
    sizes = stage_sizes(batch_size, cfg.num_aux)
    items_q: queue.Queue = queue.Queue(maxsize=sizes.queue_depth)
    results_q: queue.Queue = queue.Queue(maxsize=sizes.queue_depth)
    encode = _encode_stage(cfg, generator.provenance, results_q, state)
    encoders = stage_threads(rt.encode_threads, minimum=ENCODE_THREADS)
    prepare = _prepare_stage(
        spec.samples, condition, cfg, sizes.prepare_chunk, items_q, state, stage_threads(rt.prepare_threads)
    )
    threads = [
        _stage_thread("prepare", prepare, state),
        *(_stage_thread(f"encode-{i}", encode, state) for i in range(encoders)),
    ]
    warmup: tuple[float, list[str]] = (0.0, [])
    for t in threads:
        t.start()
    try:
        _wait(state.front_taken, state)  # front before device, in every shard
        reporter = _progress_reporter(spec.shard.index, progress)  # on this thread (Dask's worker)

        def generate() -> None:
            _generate_stage(generator, batch_size, items_q, results_q, state, reporter, score, encoders)

        warmup = _device_thread().submit(_measured, generator, generate, torch_threads).result()
    except _Stopped:
        pass
    except BaseException as e:
        state.error = state.error or e
        state.stop.set()
    finally:
        for t in threads:
            t.join()
    return warmup


def _measured(
    generator: Generator, generate: Callable[[], None], torch_threads: int
) -> tuple[float, list[str]]:
    """Run `generate` on the device thread; return the generator's warm-up seconds (its first call
    per batch shape: torch.compile's warm-up, part of "generate"; `seconds.warmup`, which `difaug
    inspect` lists with the other stages) and compile warnings of this run alone."""
    torch = sys.modules.get("torch")
    if torch is not None and torch_threads > 0:
        # OpenMP's thread count is per thread: a thread takes the process-wide setting at its first
        # parallel op and keeps it, so the long-lived device thread sets the job's own each time
        # (`cpu_threads` set the same process-wide and restores it when the last shard is done).
        torch.set_num_threads(torch_threads)
    warmup_before, warnings_before = _warmup_so_far(generator)
    generate()
    warmup_after, _ = _warmup_so_far(generator)
    warnings = generator.warnings[warnings_before:] if isinstance(generator, ReportsWarmup) else []
    return warmup_after - warmup_before, list(warnings)


def _warmup_so_far(generator: Generator) -> tuple[float, int]:
    """(warm-up seconds, number of warnings) the generator has reported so far; (0.0, 0) for a
    generator that reports neither (`ReportsWarmup` is optional)."""
    if isinstance(generator, ReportsWarmup):
        return float(generator.warmup_seconds), len(generator.warnings)
    return 0.0, 0


def _finish(
    spec: ShardSpec,
    cfg: JobConfig,
    state: _ShardState,
    fallbacks: dict[str, int],
    started: str,
    clocks: tuple[float, float],
    load_s: float,
    compile_warnings: Sequence[str] = (),
) -> ShardStats:
    rows = sorted(
        (r for r in state.rows if r["sample_id"] not in state.failed_ids),
        key=lambda r: (r["row"], r["aux_index"]),
    )
    per_sample = Counter(r["sample_id"] for r in rows)
    done_ids = set(per_sample)
    short = [sid for sid, n in per_sample.items() if n != cfg.num_aux]
    if short:
        raise RuntimeError(
            f"shard {spec.shard.index}: samples {short[:5]} lack some of their {cfg.num_aux} images"
        )
    failures = tuple(sorted(state.failures, key=lambda f: f.row or 0))
    if len(done_ids) + len(failures) != spec.shard.num_rows:
        raise RuntimeError(
            f"shard {spec.shard.index}: {len(done_ids)} done + {len(failures)} failed != {spec.shard.num_rows} rows "
            f"[{spec.shard.start}, {spec.shard.stop}) — a row went missing"
        )
    tw = time.perf_counter()
    path = shards.write_shard(rundir.shard_path(spec.out, spec.shard.index), rows)
    # Hashed as it is on disk (once; cached by size and mtime), so the marker vouches for the file.
    file = rundir.file_record(path, len(rows))
    state.add_time("write", time.perf_counter() - tw)
    stats = ShardStats(
        shard=spec.shard.index,
        rows=(spec.shard.start, spec.shard.stop),
        plan_hash=spec.plan_hash,
        done=len(done_ids),
        failed=len(failures),
        images=len(rows),
        file=file,
        failures=failures,
        seconds={k: round(v, 4) for k, v in sorted(state.busy.items())},
        load_seconds=round(load_s, 4),
        wall_seconds=round(time.perf_counter() - clocks[0], 4),
        # CPU of the whole process during the task (all threads): with two shards in flight per
        # process, the neighbouring shard's work in the same seconds counts in both.
        cpu_seconds=round(time.process_time() - clocks[1], 4),
        fallbacks=dict(sorted(fallbacks.items())),
        compile_warnings=tuple(compile_warnings),
        worker={"host": socket.gethostname(), "pid": os.getpid()},
        started=started,
        finished=_now(),
    )
    rundir.write_marker(spec.out, stats)  # the marker: written last
    return stats
