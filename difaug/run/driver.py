"""Run a generation job: plan, validate, execute one Dask task per shard, resume, summarise.

    from difaug.core.config import resolve_job
    from difaug.run.driver import run
    summary = run(resolve_job("pipelines/demo.yaml", model="models/tiny"), on_event=print)

The driver never touches images: it reads the manifest, writes the plan (`difaug.run.plan`), checks the
rows of the shards still to do (`difaug.inputs.manifest.validate_manifest`), then hands each shard
(`difaug.run.task.run_shard`) to an executor (`difaug.run.executors`: in this process, or on a Dask
cluster), which keeps at most a few shards in flight, so its memory does not grow with the manifest. Every manifest row ends in a shard or as a
recorded failure; the summary reconciles the counts with the plan.

It prints nothing: what happens is sent as typed events (`RunEvent`) to the caller's sink, and the
CLI draws them (`difaug.cli._progress`); without a sink they go to `logging`.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from difaug.core.config import Job, RuntimeConfig
from difaug.core.folderlock import FolderLock
from difaug.diffusion.sampler import CUT_PROMPT_PREFIX
from difaug.inputs.manifest import (
    Manifest,
    ManifestError,
    RowProblem,
    Sample,
    SizeLimits,
    read_manifest,
    refuse_unreadable_urls,
    repeated_ids,
    validate_manifest,
)
from difaug.run import layout, verify
from difaug.run.cluster import ClusterError
from difaug.run.cluster import preflight as cluster_preflight
from difaug.run.compile_policy import runtime_for_plan
from difaug.run.executors import Execution, open_executor
from difaug.run.model_cache import (
    ConditionFactory,
    GeneratorFactory,
    default_condition_factory,
    default_generator_factory,
    factory_key,
)
from difaug.run.plan import build_plan, prepare_run_dir
from difaug.run.records import Failure, Plan, RunDirError, ShardRange, ShardStats, Summary
from difaug.run.stages import failure
from difaug.run.task import ShardSpec
from difaug.run.verify import RunCheck
from difaug.run.warmup import compile_cache_of

__all__ = [
    "ClusterReady",
    "EventSink",
    "LockTakenOver",
    "PlanMade",
    "PromptsCut",
    "RowsRefused",
    "RunEvent",
    "ShardEvent",
    "ShardFailed",
    "ShardFinished",
    "ShardProgress",
    "log_event",
    "run",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- validation


def _row_reason(p: RowProblem) -> str:
    return f"{p.column}: {p.reason}" + (f" ({p.file})" if p.file else "")


def _validate(
    manifest: Manifest, samples: Sequence[Sample], limits: SizeLimits | None = None
) -> list[RowProblem]:
    """Problems of `samples` from `difaug.inputs.manifest.validate_manifest` (files exist and decode,
    sizes agree, the mask has foreground, …)."""
    if not samples:
        return []
    return validate_manifest(Manifest(path=manifest.path, samples=list(samples), problems=[]), limits=limits)


def pre_failures(
    manifest: Manifest, pending: Sequence[ShardRange], limits: SizeLimits | None = None
) -> dict[int, Failure]:
    """Row → failure, for rows of pending shards that cannot be generated: rows the manifest reader
    could not normalise (stage "manifest") and rows that fail validation (stage "validate")."""
    in_pending = _in_ranges(pending)
    by_row = {s.row: s for s in manifest.samples}
    out: dict[int, Failure] = {}
    for p in manifest.problems:
        if in_pending(p.row):
            reason = _row_reason(p)
            if p.row in out:
                out[p.row] = replace(out[p.row], reason=f"{out[p.row].reason}; {reason}")
            else:
                out[p.row] = failure(None, "manifest", reason, row=p.row)
    for s, reason in repeated_ids(manifest.samples):
        if in_pending(s.row) and s.row not in out:
            out[s.row] = failure(s, "validate", reason)
    todo = [s for s in manifest.samples if in_pending(s.row) and s.row not in out]
    for p in _validate(manifest, todo, limits):
        sample = by_row.get(p.row)
        reason = _row_reason(p)
        if p.row in out:
            if out[p.row].stage == "validate":
                out[p.row] = replace(out[p.row], reason=f"{out[p.row].reason}; {reason}")
        elif p.row > 0:
            out[p.row] = failure(sample, "validate", reason, row=p.row)
    return out


def _in_ranges(ranges: Sequence[ShardRange]) -> Callable[[int], bool]:
    starts = [r.start for r in ranges]

    def contains(row: int) -> bool:
        i = bisect.bisect_right(starts, row) - 1
        return i >= 0 and ranges[i].start <= row < ranges[i].stop

    return contains


def iter_specs(
    out: str,
    plan: Plan,
    manifest: Manifest,
    pending: Sequence[ShardRange],
    failures: dict[int, Failure],
) -> Iterator[ShardSpec]:
    rows = [s.row for s in manifest.samples]  # ascending: the reader keeps file order
    for r in pending:
        lo, hi = bisect.bisect_left(rows, r.start), bisect.bisect_left(rows, r.stop)
        samples = tuple(s for s in manifest.samples[lo:hi] if s.row not in failures)
        pre = tuple(failures[row] for row in range(r.start, r.stop) if row in failures)
        yield ShardSpec(r, samples, pre, out, plan.plan_hash)


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PlanMade:
    """The plan is written and checked against OUT: what is done, what is left."""

    out: str
    rows: int
    shards: int
    shard_size: int
    shards_done: int  # verified before this run
    shards_todo: int
    images_todo: int  # the progress bar's total: pending rows × X
    invalid: dict[str, str]  # shard name → why its marker did not verify (it is redone)
    # The compile cache folder the workers use ('' when they run eager: `warmup.compile_cache_of`).
    compile_cache: str = ""


@dataclass(frozen=True)
class LockTakenOver:
    """OUT's lock was left by a process of this host that no longer holds it; this run took it."""

    out: str
    owner: str  # who, and why the lock was free ("no longer running", or its pid is another process)


@dataclass(frozen=True)
class RowsRefused:
    """Rows that cannot be generated (manifest or validation problems): recorded as failures."""

    rows: int


@dataclass(frozen=True)
class PromptsCut:
    """Distinct prompts longer than the text encoder's limit, which it cut: said once per run (the
    marker of the shard that met a prompt first names it in `compile_warnings`)."""

    prompts: int
    limit: int


@dataclass(frozen=True)
class ClusterReady:
    """The Dask client is up. `dashboard`: one line for the user, the dashboard's address or why
    there is none (`cluster.dashboard_text`); `waiting_for_worker`: the run waits for a first
    worker to join (a running scheduler or SLURM, whose workers may still be queued)."""

    dashboard: str
    waiting_for_worker: bool


@dataclass(frozen=True)
class ShardEvent:
    """The base of the events about one shard: `index` is the shard's place in the plan
    (`ShardRange.index`, the number in its file names)."""

    index: int


@dataclass(frozen=True)
class ShardProgress(ShardEvent):
    """Images a running shard has finished so far (per batch; from the Dask client's thread)."""

    images: int


@dataclass(frozen=True)
class ShardFinished(ShardEvent):
    """A shard ended: `images` written; `equivalent` = its rows × X (failed rows count too). A shard
    that failed sends one too (0 images) before its `ShardFailed`, so a progress bar still counts it.
    `warmup_seconds`: the generator's first calls of new shapes in this shard (compilation, when
    compiled; marker `seconds.warmup`), on `worker` (`host:pid`; "" for a failed shard)."""

    images: int
    equivalent: int
    warmup_seconds: float = 0.0
    worker: str = ""


@dataclass(frozen=True)
class ShardFailed(ShardEvent):
    """A shard task failed after its retries (its rows are failures of stage `task`)."""

    retries: int
    reason: str
    stops_run: bool  # OUT cannot be written: the run stops (`Summary.stopped` says why)


RunEvent = (
    PlanMade
    | LockTakenOver
    | RowsRefused
    | PromptsCut
    | ClusterReady
    | ShardProgress
    | ShardFinished
    | ShardFailed
)
EventSink = Callable[[RunEvent], None]


def log_event(event: RunEvent) -> None:
    """The default sink: the notes to `logging` (per-batch progress is dropped)."""
    if isinstance(event, PlanMade):
        log.info(
            "plan: %d rows in %d shards of %d → %s (%d shards already done, %d to do)",
            event.rows, event.shards, event.shard_size, event.out, event.shards_done, event.shards_todo,
        )  # fmt: skip
        if event.invalid:
            log.warning("%d shard(s) were invalid and are redone: %s", len(event.invalid), event.invalid)
    elif isinstance(event, LockTakenOver):
        log.warning("took over the lock of %s left by %s", event.out, event.owner)
    elif isinstance(event, RowsRefused):
        log.warning("validation: %d row(s) cannot be generated; they are recorded as failures", event.rows)
    elif isinstance(event, PromptsCut):
        log.warning(
            "%d prompt(s) cut to %d tokens (the shards' markers name them)", event.prompts, event.limit
        )
    elif isinstance(event, ClusterReady):
        log.info("%s", event.dashboard)
    elif isinstance(event, ShardFailed) and not event.stops_run:
        log.error("shard %d failed after %d retries: %s", event.index, event.retries, event.reason)


# ----------------------------------------------------------------------------- execution


def _task_failures(spec: ShardSpec, error: BaseException) -> list[Failure]:
    """A shard that failed after its retries: every row of it is a failure (no marker is written,
    so a rerun tries the shard again)."""
    if layout.is_permanent(error):
        reason = layout.output_problem(error, spec.out)
    else:
        reason = f"{type(error).__name__}: {error}".strip()[:500]
    pre = {f.row: f for f in spec.failures}
    by_row = {s.row: s for s in spec.samples}
    return [
        replace(pre.get(row) or failure(by_row.get(row), "task", reason, row=row), shard=spec.shard.name)
        for row in range(spec.shard.start, spec.shard.stop)
    ]


class _Tally:
    """Adds each shard's end to the run's summary and sends its events; sets `stop` once OUT
    cannot be written."""

    def __init__(self, job: Job, summary: Summary, emit: EventSink) -> None:
        self.job, self.summary, self.emit = job, summary, emit
        self.stop = threading.Event()
        self.cut_prompts: set[str] = set()  # distinct across shards: each warning carries a digest

    def close(self) -> None:
        """The run's once-only notes, after its last shard."""
        if self.cut_prompts:
            limit = int(next(iter(self.cut_prompts)).removeprefix(CUT_PROMPT_PREFIX).split()[0])
            self.emit(PromptsCut(len(self.cut_prompts), limit))

    def done(self, spec: ShardSpec, stats: ShardStats) -> None:
        s = self.summary
        s.done += stats.done
        s.failed += stats.failed
        s.images += stats.images
        s.shards_done += 1
        s.failures.extend(replace(f, shard=spec.shard.name) for f in stats.failures)
        self.cut_prompts.update(w for w in stats.compile_warnings if w.startswith(CUT_PROMPT_PREFIX))
        worker = f"{stats.worker.get('host', '')}:{stats.worker.get('pid', '')}" if stats.worker else ""
        self.emit(
            ShardFinished(
                spec.shard.index,
                stats.images,
                spec.shard.num_rows * self.job.config.num_aux,
                warmup_seconds=stats.seconds.get("warmup", 0.0),
                worker=worker,
            )
        )

    def error(self, spec: ShardSpec, error: BaseException) -> None:
        rows = _task_failures(spec, error)
        s = self.summary
        s.failed += len(rows)
        s.failed_shards.append(spec.shard.index)
        s.failures.extend(rows)
        permanent = layout.is_permanent(error)
        if permanent and not self.stop.is_set():  # OUT cannot be written: stop, say where and what to do
            s.stopped = layout.output_problem(error, self.job.out)
            self.stop.set()
        self.emit(ShardFinished(spec.shard.index, 0, spec.shard.num_rows * self.job.config.num_aux))
        self.emit(
            ShardFailed(spec.shard.index, self.job.runtime.retries, rows[0].reason, stops_run=permanent)
        )

    def progress(self, index: int, images: int) -> None:
        self.emit(ShardProgress(index, images))


# ----------------------------------------------------------------------------- the job


def _refuse_before_plan(job: Job, manifest: Manifest) -> None:
    """What must hold before the plan is written: the manifest has rows, and OUT is a folder this
    process can write into. Raises ManifestError, the OSError of a folder that cannot be made
    (naming the path: FileExistsError when OUT is a file), or the run directory's OutputError of
    the failed write probe (read-only or full file system, no permission), which the CLI turns into
    one line; nothing in OUT is changed by a refusal."""
    if not manifest.samples and not manifest.problems:
        raise ManifestError(
            f"{manifest.path}: the manifest has no rows (only a header, or nothing); add one row per "
            "support image and class, e.g. with `difaug manifest build`"
        )
    refuse_unreadable_urls(manifest)  # http(s):// rows without aiohttp/requests: one line, not one per row
    Path(job.out).mkdir(parents=True, exist_ok=True)  # FileExistsError / NotADirectoryError name the path
    layout.probe_writable(job.out, folders=("",))  # OUT itself: its shards/ and stats/ come with the plan


def _preflight(job: Job) -> None:
    """Resolve the model spec and check its local weights on the driver, and the device and
    dtype against this machine when the workers run here, so a wrong `--model` or `--device cuda`
    without a GPU fails before the plan is written, not in every task after its retries."""
    from difaug.core.device import resolve_device, resolve_dtype
    from difaug.diffusion.loading import check_local_models
    from difaug.diffusion.specs import ModelSpec

    check_local_models(ModelSpec.from_config(job.config), job.config.condition)
    rt = job.runtime
    if _workers_here(rt):
        resolve_dtype(rt.dtype, resolve_device(rt.device))


def _workers_here(rt: RuntimeConfig) -> bool:
    """The workers run on this machine (so their device and dtype resolve as they do here)."""
    return rt.cluster in ("sync", "local", "cuda") and not rt.scheduler_address


def _capped_workers(job: Job, shards: int) -> Job:
    """A local cluster has no use for more worker processes than cores or shards to run (each
    holds its own models): the extra ones would only take memory. Said once, as a note."""
    rt = job.runtime
    if rt.cluster != "local" or rt.scheduler_address:
        return job
    cap = max(1, min(os.cpu_count() or 1, shards))
    if rt.workers <= cap:
        return job
    log.warning(
        "--workers %d capped to %d (%d cores, %d shard(s) to run)",
        rt.workers,
        cap,
        os.cpu_count() or 1,
        shards,
    )
    return replace(job, runtime=replace(rt, workers=cap))


def run(
    job: Job,
    *,
    generator_factory: GeneratorFactory | None = None,
    condition_factory: ConditionFactory | None = None,
    on_event: EventSink | None = None,
    force_unlock: bool = False,
    command: str = "",
) -> Summary:
    """Run (or resume) `job`; returns the summary (also written to OUT/summary.json). Raises
    PlanError / ManifestError / ConfigError / ModelLoadError / RunDirError (LockError, OutputError)
    before any work starts when the job cannot run.

    Nothing is printed: `on_event` receives the typed events (`PlanMade`, `LockTakenOver`,
    `RowsRefused`, `ClusterReady`, `ShardProgress`, `ShardFinished`, `ShardFailed`) — from this
    thread, and `ShardProgress` also from the Dask client's — default `log_event` (to `logging`).
    The CLI draws them (`difaug.cli._progress`).

    The whole run holds OUT's lock (`FolderLock`; `force_unlock` breaks another host's).
    `generator_factory(cfg, runtime)` builds the image generator on each worker (default:
    `AuxGenerator.from_config`); `condition_factory(cfg, runtime)` the condition (default:
    `make_condition`). Both must be picklable: module-level functions or functools.partial.
    `command` (the CLI's command line) is recorded in a new plan, so `inspect` can name it."""
    emit = on_event or log_event
    t0 = time.perf_counter()
    # The worker's model-cache key pickles the factories: an unpicklable one fails here, before
    # the plan is written, rather than in every task.
    factory_key(
        generator_factory or default_generator_factory, condition_factory or default_condition_factory, job
    )
    job.config.check_regeneration()  # settings that need each other: before the plan, one line
    if generator_factory is None:
        _preflight(job)
    manifest = read_manifest(job.manifest)
    _refuse_before_plan(job, manifest)
    cluster_preflight(job.runtime)  # SLURM accepts the worker job, the scheduler answers, a GPU is there
    plan = build_plan(job, manifest, command=command)
    run_lock = FolderLock(job.out, command=layout.GENERATE_COMMAND, force=force_unlock, log_takeover=False)
    with run_lock as lock:
        if lock.took_over is not None:  # said once, by the event
            emit(LockTakenOver(job.out, lock.took_over_note))
        return _run_locked(job, manifest, plan, (generator_factory, condition_factory), emit, t0)


def _run_locked(
    job: Job,
    manifest: Manifest,
    plan: Plan,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    emit: EventSink,
    t0: float,
) -> Summary:
    check = prepare_run_dir(job, plan)
    plan, pending = check.plan, check.unfinished
    summary = _summary_before(job.out, plan, check)
    planned_images = sum(len(r) for r in pending) * job.config.num_aux
    # The speed settings that need the plan: compile "auto" off for short jobs, the compile cache.
    job = replace(job, runtime=runtime_for_plan(job.runtime, job.out, planned_images))
    job = _capped_workers(job, len(pending))
    emit(
        PlanMade(
            out=job.out,
            rows=plan.rows,
            shards=len(plan.shards),
            shard_size=job.config.shard_size,
            shards_done=len(check.done),
            shards_todo=len(pending),
            images_todo=planned_images,
            invalid=dict(summary.redone_shards),
            compile_cache=compile_cache_of(job, planned_images, workers_here=_workers_here(job.runtime)),
        )
    )
    failures = pre_failures(manifest, pending, SizeLimits.for_job(job))
    if failures:
        emit(RowsRefused(len(failures)))
    specs = iter_specs(job.out, plan, manifest, pending, failures)
    if pending:
        try:
            tally = _Tally(job, summary, emit)
            _execute(job, specs, factories, tally)
            tally.close()
        except (KeyboardInterrupt, ClusterError) as e:
            # SIGINT, SIGTERM (`cluster.Terminated`), or a cluster left without workers past
            # --worker-wait: say so in OUT, then stop with that line.
            interrupted = isinstance(e, KeyboardInterrupt)
            summary.stopped = (
                f"interrupted ({getattr(e, 'signal_name', 'SIGINT')})" if interrupted else str(e)
            )
            # The shards in flight when it came end in none of the counts: they are not run either.
            summary.not_run = summary.rows - summary.done - summary.failed - summary.skipped
            _close(summary, job.out, plan, t0)
            raise
    summary.not_run = sum(spec.shard.num_rows for spec in specs)  # what a stopped run never started
    return _close(summary, job.out, plan, t0)


def _summary_before(out: str, plan: Plan, check: RunCheck) -> Summary:
    """The summary as the run starts: the shards verified before it are skipped, the invalid
    ones are redone."""
    summary = Summary(out=out, rows=plan.rows, shards=len(plan.shards))
    summary.redone_shards = {c.shard.name: c.reason for c in check.invalid}
    for c in check.done:
        assert c.stats is not None
        summary.skipped += c.stats.done + c.stats.failed
        summary.skipped_failed += c.stats.failed
        summary.shards_skipped += 1
    return summary


def _execute(
    job: Job,
    specs: Iterator[ShardSpec],
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    tally: _Tally,
) -> None:
    def ready(dashboard: str, waiting_for_worker: bool) -> None:
        tally.summary.dashboard = dashboard
        tally.emit(ClusterReady(dashboard, waiting_for_worker))

    execution = Execution(specs, job, factories, tally.done, tally.error, tally.progress, tally.stop)
    nanny = logging.getLogger("distributed.nanny")
    nanny.addFilter(_quiet_shutdown)
    try:
        _run_executor(job, execution, ready, tally)
    finally:
        nanny.removeFilter(_quiet_shutdown)


def _quiet_shutdown(record: logging.LogRecord) -> bool:
    """Drop Dask's note that it kills a worker process at the cluster's close (its normal end of a
    local cluster, after the shards are written) unless the run is verbose (debug logging)."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return True
    return not str(record.msg).startswith("Worker process still alive after")


def _run_executor(job: Job, execution: Execution, ready: Callable[[str, bool], None], tally: _Tally) -> None:
    with open_executor(job.runtime, on_ready=ready) as executor:
        try:
            executor.run(execution)
        finally:
            tally.summary.workers_replaced = getattr(executor, "workers_replaced", 0)


def _close(summary: Summary, out: str, plan: Plan, t0: float) -> Summary:
    """Tidy OUT and write the summary (a summary that cannot be written says so in `stopped`)."""
    try:
        layout.remove_temp_files(out)  # left by workers killed mid-write (never read)
    except OSError as e:
        log.warning("%s: temp files not removed (%s)", out, e)
    summary.seconds = time.perf_counter() - t0
    summary.failures.sort(key=lambda f: f.row or 0)
    summary.failed_shards.sort()
    summary.reconcile()
    summary.all_failures = _all_failures(summary, out, plan)
    try:
        layout.write_summary(out, summary)
    except (OSError, RunDirError) as e:
        note = f"summary not written: {e}"
        summary.stopped = f"{summary.stopped}; {note}" if summary.stopped else note
    return summary


def _all_failures(summary: Summary, out: str, plan: Plan) -> list[Failure]:
    """This run's failures plus those recorded in the verified markers of earlier runs."""
    seen = {(f.row, f.stage) for f in summary.failures}
    previous = verify.failures_of(verify.verify_run(out, plan).done)
    return sorted(
        summary.failures + [f for f in previous if (f.row, f.stage) not in seen], key=lambda f: f.row or 0
    )
