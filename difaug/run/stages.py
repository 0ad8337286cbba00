"""The three stages of one shard task, overlapping through bounded queues so the device never
waits on the host:

    prepare (thread)        read + decode + condition  ──► items queue ─┐
    generate (device thr.)  generator batches, bucketed by shape       ◄┘ ──► results queue ─┐
    encode (threads)        encode PNG/JPEG + build rows                                    ◄┘

The prepare stage holds the process's prepare turn and the generate stage runs on its device
thread (`difaug.run.shard_process.ShardTurn`), so two shards in flight never mix there.
A row whose *input* is at fault (missing/undecodable file, empty mask, …: `INPUT_ERRORS`) becomes
a recorded failure and the rest of the shard continues; any other error (the generator's, CUDA out
of memory, …) is left in `ShardState.error` and fails the task.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from difaug.conditions import ConditionMaker
from difaug.core import imageio
from difaug.core.config import Job, JobConfig
from difaug.diffusion.contracts import Generator, ReportsWarmup
from difaug.inputs.manifest import Sample
from difaug.run import shards
from difaug.run.model_cache import DriftScorer
from difaug.run.records import Failure
from difaug.run.shard_process import ShardTurn

_DONE = object()  # end-of-stream sentinel in the stage queues
# PNG encoding (the largest host cost per image) releases the GIL: several encoders keep up with a
# device that is faster than one core's encoding (at 40 img/s, ~12 ms/img of lossless PNG at 512²
# needs about half a core; 2 threads at least). Row order does not depend on them (rows are sorted).
ENCODE_THREADS = 2  # the minimum; `RuntimeConfig.encode_threads` 0 = stage_threads() picks

# What a bad *input* raises (ImageReadError, ConditionError, ConfigError are ValueErrors): recorded
# as that row's failure. Anything else (CUDA out of memory, a bug) is the machine's or the code's
# fault: it fails the task, Dask retries it, and no marker claims the rows failed for good.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


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


def failure(sample: Sample | None, stage: str, reason: str, row: int | None = None) -> Failure:
    """The failure of `sample` (or of manifest `row` when there is no sample)."""
    return Failure(
        row if row is not None else (sample.row if sample else 0),
        sample.sample_id if sample else "",
        stage,
        reason,
    )


@dataclass
class ShardState:
    """What the three stages share. Lists/dicts are only appended to (safe under the GIL)."""

    failures: list[Failure] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    failed_ids: set[str] = field(default_factory=set)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy seconds per stage
    error: BaseException | None = None
    # Drift scoring (difaug.diffusion.diffseg): support masks by sample id, kept only when the job
    # scores (None otherwise).
    masks: dict[str, np.ndarray] | None = None
    # Regeneration: the regenerated images' share of the generate and score seconds (the rows
    # themselves say which attempt each kept and how many it took).
    regenerate_seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by the caller to abandon the shard (the in-process executor, interrupted): stages wind down.
    cancel: threading.Event | None = None
    halted: bool = False  # a stage wound down before its end (stop or cancel)
    fallbacks: Counter[str] = field(default_factory=Counter)  # this shard's, counted in its prepare turn

    def stopped(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    def fail(self, sample: Sample, stage: str, reason: str) -> None:
        with self.lock:
            if sample.sample_id not in self.failed_ids:
                self.failed_ids.add(sample.sample_id)
                self.failures.append(failure(sample, stage, reason))

    def add_time(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


class _Stopped(Exception):
    """Another stage failed, or the shard was cancelled; this one winds down."""


def _put(q: queue.Queue, obj: Any, state: ShardState) -> None:
    """A blocking put that gives up once another stage has failed (no deadlock on a full queue)."""
    while not state.stopped():
        try:
            q.put(obj, timeout=0.1)
            return
        except queue.Full:
            continue
    state.halted = True
    raise _Stopped


def _get(q: queue.Queue, state: ShardState) -> Any:
    while not state.stopped():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    state.halted = True
    raise _Stopped


def _stage_thread(name: str, fn: Callable[[], None], state: ShardState) -> threading.Thread:
    def body() -> None:
        try:
            fn()
        except _Stopped:
            pass
        except BaseException as e:  # handed to the task thread, which re-raises it
            state.error = state.error or e
            state.stop.set()

    return threading.Thread(target=body, name=f"difaug-{name}", daemon=True)


def short_reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 500 else text[:497] + "..."


# ----------------------------------------------------------------------------- prepare


def _decode(sample: Sample, state: ShardState) -> Any | None:
    from difaug.conditions import load_input

    t0 = time.perf_counter()
    try:
        return load_input(sample)
    except INPUT_ERRORS as e:
        state.fail(sample, "read", short_reason(e))
        return None
    finally:
        state.add_time("read", time.perf_counter() - t0)


def _conditions(
    condition: ConditionMaker, inputs: list[Any], state: ShardState
) -> list[tuple[Any, np.ndarray]]:
    """Conditions for a batch; an input error is recorded against its own row only."""
    from difaug.conditions import conditions_or_errors

    t0 = time.perf_counter()
    try:
        out = []
        for inp, cond in zip(inputs, conditions_or_errors(condition, inputs, INPUT_ERRORS), strict=True):
            if isinstance(cond, BaseException):
                state.fail(inp.sample, "condition", short_reason(cond))
            else:
                out.append((inp, cond))
        return out
    finally:
        state.add_time("condition", time.perf_counter() - t0)


@dataclass(frozen=True)
class _Prepare:
    """The prepare stage of one shard: decode, condition and queue its work items."""

    samples: Sequence[Sample]
    condition: ConditionMaker
    cfg: JobConfig
    chunk: int
    items_q: queue.Queue
    state: ShardState
    turn: ShardTurn
    decode_threads: int

    def __call__(self) -> None:
        # Held until the last item is queued: the condition's fallback counter is this shard's alone.
        with self.turn.prepare():
            before = Counter(self.condition.fallbacks)
            try:
                self._prepare_all()
                _put(self.items_q, _DONE, self.state)
            finally:
                self.state.fallbacks = Counter(self.condition.fallbacks) - before

    def _prepare_all(self) -> None:
        # Decoding (PIL/OpenCV release the GIL) runs on `decode_threads`, up to two chunks ahead
        # of the condition step; results are taken in sample order, so timing never reaches
        # the items' order, and at most three chunks of decoded images are held at once.
        samples, state = self.samples, self.state
        chunks = [samples[i : i + self.chunk] for i in range(0, len(samples), self.chunk)]
        pool = ThreadPoolExecutor(max(1, self.decode_threads), thread_name_prefix="difaug-decode")
        try:
            ahead = [[pool.submit(_decode, s, state) for s in c] for c in chunks[:2]]
            for i in range(len(chunks)):
                futures = ahead.pop(0)
                if i + 2 < len(chunks):
                    ahead.append([pool.submit(_decode, s, state) for s in chunks[i + 2]])
                inputs = [x for x in (f.result() for f in futures) if x is not None]
                if inputs:
                    self._prepare_chunk(inputs)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare_chunk(self, inputs: list[Any]) -> None:
        from difaug.diffusion.sampler import make_work_items

        state = self.state
        for inp, cond in _conditions(self.condition, inputs, state):
            h, w = inp.image.shape[:2]
            try:
                items = make_work_items(inp.sample, cond, (w, h), self.cfg)
            except INPUT_ERRORS as e:
                state.fail(inp.sample, "condition", short_reason(e))
                continue
            if state.masks is not None:
                state.masks[inp.sample.sample_id] = inp.mask
            for item in items:
                _put(self.items_q, (inp.sample, item), state)


# ----------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class _Best:
    """The best-scoring attempt of an image so far (kept when none passes)."""

    result: Any
    score: Any  # DriftScore
    attempt: int


_Entry = tuple[Sample, Any, int]  # (sample, work item, attempt)


def _columns(kept: int, generated: int, passed: bool | None) -> dict[str, Any]:
    """A regenerating row's `shards.REGEN_COLUMNS`."""
    return {"attempt": kept, "attempts": generated, "drift_pass": passed}


class _Generate:
    """The generate stage of one shard: bucket items by condition shape (`ShapeBuckets`), run a
    batch when a bucket fills and the rest at the end; score each batch right after it.

    With `min_drift_iou` > 0, an image scoring below it goes back into the buckets with its next
    attempt's seed (`retry_item`), so regenerations ride in the next full batches with the shard's
    first attempts; it leaves for the encoders once an attempt passes, or with its best attempt
    when `max_attempts` are spent. Batches depend only on the shard's contents, the scores and the
    generator's batch size, never on timing, so a shard's images are the same on every run,
    worker and retry."""

    def __init__(
        self,
        generator: Generator,
        cfg: JobConfig,
        queues: tuple[queue.Queue, queue.Queue],
        state: ShardState,
        report: Callable[[int], None],
        drift_scorer: DriftScorer | None,
        encoders: int,
    ) -> None:
        from difaug.diffusion.sampler import ShapeBuckets

        self.generator, self.cfg, self.state, self.report, self.encoders = (
            generator, cfg, state, report, encoders,
        )  # fmt: skip
        self.items_q, self.results_q = queues
        self.scorer = drift_scorer if state.masks is not None else None
        self.regenerate = cfg.min_drift_iou > 0 and self.scorer is not None
        self.buckets: ShapeBuckets[_Entry] = ShapeBuckets(generator.batch_size)
        self.ready: deque[list[_Entry]] = deque()
        self.best: dict[str, _Best] = {}
        self.done = 0  # images that left for the encoders

    def __call__(self) -> None:
        while True:
            got = _get(self.items_q, self.state)
            if got is _DONE:
                break
            self._add((got[0], got[1], 0))
            self._run_ready()
        while True:  # the partial buckets, then the regenerations they ask for, until none is left
            self.ready.extend(self.buckets.drain())
            if not self.ready:
                break
            self._run_ready()
        for _ in range(self.encoders):
            _put(self.results_q, _DONE, self.state)

    def _add(self, entry: _Entry) -> None:
        full = self.buckets.add(tuple(entry[1].condition.shape), entry)
        if full is not None:
            self.ready.append(full)

    def _run_ready(self) -> None:
        while self.ready:
            self._flush(self.ready.popleft())

    def _flush(self, batch: list[_Entry]) -> None:
        state = self.state
        t0 = time.perf_counter()
        # generate() rather than run_batch(): the generator may pad short batches (torch.compile).
        results = self.generator.generate([item for _, item, _ in batch])
        seconds = time.perf_counter() - t0
        state.add_time("generate", seconds)
        if len(results) != len(batch):
            raise RuntimeError(f"generator returned {len(results)} images for a batch of {len(batch)}")
        scores: list[Any] = [None] * len(batch)
        if self.scorer is not None:  # on the device, right after the batch
            scores = self._score(batch, results)
            seconds = time.perf_counter() - t0
        retries = sum(1 for _, _, attempt in batch if attempt > 0)
        if retries:
            state.regenerate_seconds += seconds * retries / len(batch)
        for entry, res, score in zip(batch, results, scores, strict=True):
            self._settle(entry, res, score)
        self.report(self.done)

    def _score(self, batch: list[_Entry], results: Sequence[Any]) -> list[Any]:
        assert self.scorer is not None and self.state.masks is not None
        t0 = time.perf_counter()
        drift = self.scorer(
            [r.image for r in results],
            [self.state.masks[s.sample_id] for s, _, _ in batch],
            [s.class_id for s, _, _ in batch],
        )
        self.state.add_time("score", time.perf_counter() - t0)
        return list(drift)

    def _settle(self, entry: _Entry, res: Any, score: Any) -> None:
        """Keep this attempt, regenerate it, or (attempts spent) keep the best one."""
        from difaug.diffusion.sampler import retry_item

        sample, item, attempt = entry
        if not self.regenerate:
            self._keep(sample, res, score, None)
            return
        iou = score.iou
        if iou is None or iou >= self.cfg.min_drift_iou:  # None: no valid mask pixel to judge by
            self.best.pop(item.key, None)
            self._keep(sample, res, score, _columns(attempt, attempt + 1, None if iou is None else True))
            return
        best = self.best.get(item.key)
        if best is None or iou > best.score.iou:  # ties keep the earlier attempt
            best = self.best[item.key] = _Best(res, score, attempt)
        if attempt + 1 < self.cfg.max_attempts:
            self._add((sample, retry_item(item, self.cfg.seed, attempt + 1), attempt + 1))
            return
        del self.best[item.key]
        self._keep(sample, best.result, best.score, _columns(best.attempt, attempt + 1, False))

    def _keep(self, sample: Sample, res: Any, score: Any, attempts: dict[str, Any] | None) -> None:
        self.done += 1
        _put(self.results_q, (sample, res, None if score is None else score.columns(), attempts), self.state)


class Measured(NamedTuple):
    """What a generate stage reports of the generator: warm-up seconds (its first call per batch
    shape: torch.compile's warm-up, part of "generate"; `seconds.warmup`, which `difaug inspect`
    lists with the other stages) and the compile warnings of this stage alone."""

    warmup_seconds: float
    compile_warnings: tuple[str, ...]


def _measured(generator: Generator, generate: Callable[[], None], torch_threads: int) -> Measured:
    """Run `generate` on the device thread and measure it (`Measured`)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch_threads > 0:
        # OpenMP's thread count is per thread: a thread takes the process-wide setting at its first
        # parallel op and keeps it, so the long-lived device thread sets the job's own each time
        # (`TorchThreads` set the same process-wide and restores it when the last shard is done).
        torch.set_num_threads(torch_threads)
    warmup_before, warnings_before = _warmup_so_far(generator)
    generate()
    warmup_after, _ = _warmup_so_far(generator)
    warnings = generator.warnings[warnings_before:] if isinstance(generator, ReportsWarmup) else []
    return Measured(warmup_after - warmup_before, tuple(warnings))


def _warmup_so_far(generator: Generator) -> tuple[float, int]:
    """(warm-up seconds, number of warnings) the generator has reported so far; (0.0, 0) for a
    generator that reports neither (`ReportsWarmup` is optional)."""
    if isinstance(generator, ReportsWarmup):
        return float(generator.warmup_seconds), len(generator.warnings)
    return 0.0, 0


# ----------------------------------------------------------------------------- encode


def _encode_stage(
    cfg: JobConfig, provenance: dict, results_q: queue.Queue, state: ShardState
) -> Callable[[], None]:
    cond_png: dict[str, bytes] = {}

    def run() -> None:
        while True:
            got = _get(results_q, state)
            if got is _DONE:
                return
            sample, res, scores, attempts = got
            if sample.sample_id in state.failed_ids:
                continue
            t0 = time.perf_counter()
            try:
                state.rows.append(_row(sample, res, cfg, provenance, cond_png, scores, attempts))
            except INPUT_ERRORS as e:
                state.fail(sample, "encode", short_reason(e))
            state.add_time("encode", time.perf_counter() - t0)

    return run


def _row(
    sample: Sample,
    res: Any,
    cfg: JobConfig,
    prov: dict,
    cond_png: dict[str, bytes],
    scores: dict | None = None,
    attempts: dict | None = None,
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
        # PNG encoding is the largest host cost per image: the aux images take the fast encoder.
        aux_bytes=imageio.encode(res.image, cfg.image_format, cfg.jpeg_quality, fast=True),
        provenance=prov,
        scores=scores,
        attempts=attempts,
    )


# ----------------------------------------------------------------------------- all three


@dataclass(frozen=True)
class StageInputs:
    """What the stages of one shard are run with."""

    samples: Sequence[Sample]
    job: Job
    generator: Generator
    condition: ConditionMaker
    drift_scorer: DriftScorer | None
    report: Callable[[int], None]  # images generated so far in this attempt
    torch_threads: int  # torch's thread count for the device thread (0: leave it, nothing was pinned)


def run_stages(inputs: StageInputs, state: ShardState, turn: ShardTurn) -> Measured:
    """Run the three stages of one shard and measure its generate stage (on the device thread, so
    another shard's warm-up and warnings never mix in). A stage's error is left in `state.error`;
    every thread is joined and every lock released."""
    cfg, rt, generator = inputs.job.config, inputs.job.runtime, inputs.generator
    sizes = stage_sizes(generator.batch_size, cfg.num_aux)
    items_q: queue.Queue = queue.Queue(maxsize=sizes.queue_depth)
    results_q: queue.Queue = queue.Queue(maxsize=sizes.queue_depth)
    encoders = stage_threads(rt.encode_threads, minimum=ENCODE_THREADS)
    prepare = _Prepare(
        inputs.samples, inputs.condition, cfg, sizes.prepare_chunk, items_q, state, turn,
        stage_threads(rt.prepare_threads),
    )  # fmt: skip
    encode = _encode_stage(cfg, generator.provenance, results_q, state)
    threads = [
        _stage_thread("prepare", prepare, state),
        *(_stage_thread(f"encode-{i}", encode, state) for i in range(encoders)),
    ]

    def generate() -> Measured:
        stage = _Generate(
            generator, cfg, (items_q, results_q), state, inputs.report, inputs.drift_scorer, encoders
        )
        return _measured(generator, stage, inputs.torch_threads)

    measured = Measured(0.0, ())
    for t in threads:
        t.start()
    try:
        got = turn.on_device(generate, state.stopped)
        if got is None:
            state.halted = True
        else:
            measured = got
    except _Stopped:
        pass
    except BaseException as e:
        state.error = state.error or e
        state.stop.set()
    finally:
        for t in threads:
            t.join()
    return measured
