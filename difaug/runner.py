"""Run a generation job: plan, validate, execute one Dask task per shard, resume, summarise.

    from difaug.config import resolve_job
    from difaug.runner import run
    summary = run(resolve_job("pipelines/demo.yaml", model="models/tiny"))

The driver never touches images: it reads the manifest, writes the plan (`difaug.plan`), checks the
rows of the shards still to do (`difaug.manifest.validate_manifest` when present), then hands each
shard to `difaug.worker.run_shard` on the cluster (`difaug.cluster`) and keeps at most a few shards
in flight, so its memory does not grow with the manifest. Every manifest row ends in a shard or as
a recorded failure; the summary reconciles the counts with the plan.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from difaug import plan as plan_mod
from difaug import rundir
from difaug.config import Job
from difaug.manifest import Manifest, RowProblem, Sample, SizeLimits, read_manifest, repeated_ids
from difaug.rundir import Failure, Plan, RunLock, ShardRange, ShardStats, Summary
from difaug.worker import (
    PROGRESS_TOPIC,
    ConditionFactory,
    GeneratorFactory,
    ShardSpec,
    SleepGenerator,
    default_condition_factory,
    default_generator_factory,
    factory_key,
    failure,
    run_shard,
    sleep_generator_factory,
)

__all__ = ["RunSummary", "SleepGenerator", "run", "sleep_generator_factory"]

MAX_LISTED_FAILURES = 20


RunSummary = Summary  # the summary record lives with the other run-directory records


# ----------------------------------------------------------------------------- validation


def _validate(
    manifest: Manifest, samples: Sequence[Sample], limits: SizeLimits | None = None
) -> list[RowProblem]:
    """Problems of `samples` from `difaug.manifest.validate_manifest` (files exist and decode,
    sizes agree, the mask has foreground, …)."""
    if not samples:
        return []
    try:
        from difaug.manifest import validate_manifest
    except ImportError:  # an older manifest module: the shard task still catches bad files
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
            reason = f"{p.column}: {p.reason}" + (f" ({p.file})" if p.file else "")
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
        reason = f"{p.column}: {p.reason}" + (f" ({p.file})" if p.file else "")
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


# ----------------------------------------------------------------------------- progress


class _Progress:
    """A rich bar in images, with images/s and ETA; fed per batch (live) and per shard (final)."""

    def __init__(self, console: Any, total_images: int, enabled: bool):
        self.finished = 0  # image-equivalents of finished shards (failed rows count X)
        self.generated = 0  # images actually written in this run
        self.live: dict[int, int] = {}
        self.closed: set[int] = set()  # shards whose late progress events are ignored
        self.lock = threading.Lock()  # events arrive on the Dask client's thread
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and total_images:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]generating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images · {task.fields[rate]} img/s · ETA"),
                TimeRemainingColumn(),
                TextColumn("· elapsed"),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.bar.add_task("generate", total=total_images, rate="-")
            self.bar.start()

    def _refresh(self) -> None:
        if self.bar is None:
            return
        live = sum(self.live.values())
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (self.generated + live) / elapsed
        self.bar.update(self.task, completed=self.finished + live, rate=f"{rate:.2f}")

    def shard_progress(self, index: int, images: int) -> None:
        with self.lock:
            if index not in self.closed:
                self.live[index] = images
                self._refresh()

    def shard_finished(self, index: int, images: int, equivalent: int) -> None:
        with self.lock:
            self.closed.add(index)
            self.live.pop(index, None)
            self.generated += images
            self.finished += equivalent
            self._refresh()

    def close(self) -> None:
        if self.bar is not None:
            with self.lock:
                self._refresh()
            self.bar.stop()


# ----------------------------------------------------------------------------- execution


def _task_failures(spec: ShardSpec, error: BaseException) -> list[Failure]:
    """A shard that failed after its retries: every row of it is a failure (no marker is written,
    so a rerun tries the shard again)."""
    if rundir.is_permanent(error):
        reason = rundir.output_problem(error, spec.out)
    else:
        reason = f"{type(error).__name__}: {error}".strip()[:500]
    pre = {f.row: f for f in spec.failures}
    by_row = {s.row: s for s in spec.samples}
    return [
        replace(pre.get(row) or failure(by_row.get(row), "task", reason, row=row), shard=spec.shard.name)
        for row in range(spec.start, spec.stop)
    ]


def _run_sync(
    specs: Iterator[ShardSpec],
    job: Job,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    on_done: Callable[[ShardSpec, ShardStats], None],
    on_error: Callable[[ShardSpec, BaseException], None],
    progress: _Progress,
    stop: threading.Event,
) -> None:
    for spec in specs:
        for attempt in range(job.runtime.retries + 1):
            try:
                stats = run_shard(spec, job, *factories, progress=progress.shard_progress)
            except Exception as e:
                if attempt == job.runtime.retries or rundir.is_permanent(e):  # no retry can fix those
                    on_error(spec, e)
                    break
            else:
                on_done(spec, stats)
                break
        if stop.is_set():
            return


def _run_dask(
    client: Any,
    specs: Iterator[ShardSpec],
    job: Job,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    on_done: Callable[[ShardSpec, ShardStats], None],
    on_error: Callable[[ShardSpec, BaseException], None],
    progress: _Progress,
    resources: dict[str, int] | None,
    stop: threading.Event,
) -> None:
    from distributed import as_completed

    def on_event(event: tuple[float, dict]) -> None:
        msg = event[1]
        progress.shard_progress(msg["shard"], msg["images"])

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    in_flight: dict[str, ShardSpec] = {}
    pending = as_completed()

    def capacity() -> int:
        # A few shards per worker keep every worker busy without the driver holding the whole plan.
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        return max(4, 2 * job.runtime.workers, 2 * n)

    def submit_more() -> None:
        limit = capacity()  # one scheduler query per completed shard, not one per submission
        while len(in_flight) < limit and not stop.is_set():
            spec = next(specs, None)
            if spec is None:
                return
            key = f"shard-{spec.index:05d}-{spec.plan_hash[:8]}"
            future = client.submit(
                run_shard,
                spec,
                job,
                *factories,
                pure=False,
                retries=job.runtime.retries,
                key=key,
                resources=resources,
            )
            in_flight[future.key] = spec
            pending.add(future)

    submit_more()
    try:
        for future in pending:
            spec = in_flight.pop(future.key)
            if future.status == "finished":
                on_done(spec, future.result())
            else:
                try:
                    error = future.exception()
                except Exception as e:  # cancelled: no exception object to fetch
                    error = e
                on_error(spec, error)
            future.release()
            submit_more()
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)


# ----------------------------------------------------------------------------- the job


def _refuse_before_plan(job: Job, manifest: Manifest) -> None:
    """What must hold before the plan is written: the manifest has rows, and OUT is a folder this
    process can write into. Raises ManifestError, or the OSError of the failed probe (naming the
    path: PermissionError, read-only or full file system, FileExistsError when OUT is a file),
    which the CLI turns into one line; nothing in OUT is changed by a refusal."""
    import os
    import uuid

    from difaug.manifest import ManifestError

    if not manifest.samples and not manifest.problems:
        raise ManifestError(
            f"{manifest.path}: the manifest has no rows (only a header, or nothing); add one row per "
            "support image and class, e.g. with `difaug manifest build`"
        )
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)  # FileExistsError / NotADirectoryError name the path
    probe = out / f".difaug-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"difaug")
    except OSError as e:  # a failed write() (disk full) names no file: say which
        raise OSError(e.errno, e.strerror, str(out)) from e
    finally:
        probe.unlink(missing_ok=True)


def _preflight(job: Job) -> None:
    """Resolve the model spec on the driver, so a wrong `--model` fails before any task does."""
    from difaug.models import ModelSpec

    ModelSpec.from_config(job.config)


def run(
    job: Job,
    *,
    generator_factory: GeneratorFactory | None = None,
    condition_factory: ConditionFactory | None = None,
    console: Any = None,
    force_unlock: bool = False,
    command: str = "",
) -> Summary:
    """Run (or resume) `job`; returns the summary. Raises PlanError / ManifestError / ConfigError /
    ModelLoadError / RunDirError (LockError, OutputError) before any work starts when the job
    cannot run.

    The whole run holds OUT's lock (`difaug.rundir.RunLock`; `force_unlock` breaks another host's).
    `generator_factory(cfg, runtime)` builds the image generator on each worker (default:
    `AuxGenerator.from_config`); `condition_factory(cfg, runtime)` the condition (default:
    `make_condition`). Both must be picklable: module-level functions or functools.partial.
    `command` (the CLI's command line) is recorded in a new plan, so `inspect` can name it."""
    from rich.console import Console

    console = console or Console()
    t0 = time.perf_counter()
    # The worker's model-cache key pickles the factories: an unpicklable one fails here, before
    # the plan is written, rather than in every task.
    factory_key(
        generator_factory or default_generator_factory, condition_factory or default_condition_factory, job
    )
    if generator_factory is None:
        _preflight(job)
    manifest = read_manifest(job.manifest)
    _refuse_before_plan(job, manifest)
    the_plan = plan_mod.build_plan(job, manifest, command=command)
    with RunLock(job.out, force=force_unlock) as lock:
        if lock.took_over is not None:
            console.print(
                f"[yellow]note:[/] took over the lock of {job.out} left by {lock.took_over} (not running)",
                highlight=False,
            )
        return _run_locked(job, manifest, the_plan, (generator_factory, condition_factory), console, t0)


def _run_locked(
    job: Job,
    manifest: Manifest,
    the_plan: Plan,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    console: Any,
    t0: float,
) -> Summary:
    from rich.markup import escape

    from difaug.cluster import dashboard_text, gpu_resources, open_client, uses_client

    check = plan_mod.prepare_run_dir(job, the_plan)
    the_plan = check.plan
    ranges = list(the_plan.shards)
    pending = check.unfinished
    summary = Summary(out=job.out, rows=the_plan.rows, shards=len(ranges))
    summary.redone_shards = {c.shard.name: c.reason for c in check.invalid}
    for c in check.done:
        assert c.stats is not None
        summary.skipped += c.stats.done + c.stats.failed
        summary.skipped_failed += c.stats.failed
        summary.shards_skipped += 1
    # The speed settings that need the plan: compile "auto" off for short jobs, the compile cache.
    from difaug.models import runtime_for_plan

    planned_images = sum(len(r) for r in pending) * job.config.num_aux
    job = replace(job, runtime=runtime_for_plan(job.runtime, job.out, planned_images))
    console.print(
        f"plan: {the_plan.rows} rows in {len(ranges)} shards of {job.config.shard_size} → {job.out} "
        f"({len(check.done)} shards already done, {len(pending)} to do)",
        highlight=False,
    )
    if check.invalid:
        console.print(
            f"[yellow]{len(check.invalid)} shard(s) were invalid and are redone:[/] "
            + escape("; ".join(f"{c.shard.name} ({c.reason})" for c in check.invalid)),
            highlight=False,
        )
    failures = pre_failures(manifest, pending, SizeLimits.for_job(job))
    if failures:
        console.print(
            f"validation: {len(failures)} row(s) cannot be generated; they are recorded as failures"
        )
    specs = iter_specs(job.out, the_plan, manifest, pending, failures)
    x = job.config.num_aux
    stop = threading.Event()

    def on_done(spec: ShardSpec, stats: ShardStats) -> None:
        summary.done += stats.done
        summary.failed += stats.failed
        summary.images += stats.images
        summary.shards_done += 1
        summary.failures.extend(replace(f, shard=spec.shard.name) for f in stats.failures)
        progress.shard_finished(spec.index, stats.images, spec.num_rows * x)

    def on_error(spec: ShardSpec, error: BaseException) -> None:
        rows = _task_failures(spec, error)
        summary.failed += len(rows)
        summary.failed_shards.append(spec.index)
        summary.failures.extend(rows)
        progress.shard_finished(spec.index, 0, spec.num_rows * x)
        if rundir.is_permanent(error):  # OUT cannot be written: stop, say where and what to do
            if not stop.is_set():
                summary.stopped = rundir.output_problem(error, job.out)
                stop.set()
            return
        reason = escape(rows[0].reason)
        console.print(f"[red]shard {spec.index} failed after {job.runtime.retries} retries:[/] {reason}")

    progress = _Progress(console, sum(len(r) for r in pending) * x, job.runtime.progress)
    try:
        if not pending:
            pass
        elif uses_client(job.runtime):
            with open_client(job.runtime) as client:
                summary.dashboard = dashboard_text(client)
                console.print(summary.dashboard, highlight=False)
                if job.runtime.scheduler_address or job.runtime.cluster == "slurm":
                    console.print("waiting for a worker…")
                    client.wait_for_workers(1)
                resources = gpu_resources(client, job.runtime)
                _run_dask(client, specs, job, factories, on_done, on_error, progress, resources, stop)
        else:
            _run_sync(specs, job, factories, on_done, on_error, progress, stop)
    finally:
        progress.close()
    summary.not_run = sum(spec.num_rows for spec in specs)  # what a stopped run never started
    try:
        rundir.remove_temp_files(job.out)  # left by workers killed mid-write (never read)
    except OSError as e:
        logging.getLogger(__name__).warning("%s: temp files not removed (%s)", job.out, e)
    summary.seconds = time.perf_counter() - t0
    summary.failures.sort(key=lambda f: f.row or 0)
    summary.failed_shards.sort()
    summary.reconcile()
    summary.all_failures = _all_failures(summary, job.out, the_plan)
    try:
        rundir.write_summary(job.out, summary)
    except (OSError, rundir.RunDirError) as e:
        note = f"summary not written: {e}"
        summary.stopped = f"{summary.stopped}; {note}" if summary.stopped else note
    print_summary(summary, console)
    return summary


def _all_failures(summary: Summary, out: str, plan: Plan) -> list[Failure]:
    """This run's failures plus those recorded in the verified markers of earlier runs."""
    seen = {(f.row, f.stage) for f in summary.failures}
    previous = rundir.failures_of(rundir.verify_run(out, plan).done)
    return sorted(
        summary.failures + [f for f in previous if (f.row, f.stage) not in seen], key=lambda f: f.row or 0
    )


def print_summary(summary: Summary, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from difaug.text import display_text

    table = Table(title=f"difaug generate → {summary.out}", show_header=True)
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_column("shards", justify="right")
    table.add_row("done now", str(summary.done), str(summary.shards_done))
    table.add_row("failed now", str(summary.failed), str(len(summary.failed_shards)) + " (task)")
    table.add_row(
        "skipped (done before)",
        f"{summary.skipped} ({summary.skipped_failed} failed then)",
        str(summary.shards_skipped),
    )
    if summary.not_run:
        table.add_row("not run (stopped)", str(summary.not_run), "")
    table.add_row("[bold]planned", f"[bold]{summary.rows}", f"[bold]{summary.shards}")
    console.print(table)
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    console.print(
        f"{summary.images} images in {summary.seconds:.1f} s ({rate:.2f} images/s)", highlight=False
    )
    console.print(
        f"rows: done {summary.done} + failed {summary.failed} + skipped {summary.skipped}"
        + (f" + not run {summary.not_run}" if summary.not_run else "")
        + f" = {summary.rows}",
        highlight=False,
    )
    for f in summary.failures[:MAX_LISTED_FAILURES]:
        sid = f" {f.sample_id}" if f.sample_id else ""
        # Manifest text reaches the terminal: one visible line; reasons hold brackets ([Errno 2] …).
        what = escape(display_text(f"{sid} [{f.stage}] {f.reason}", max_chars=300))
        console.print(f"  [red]row {f.row}[/]{what}", highlight=False)
    more = len(summary.failures) - MAX_LISTED_FAILURES
    summary_file = rundir.summary_path(summary.out)
    if more > 0:
        console.print(f"  … and {more} more: see {summary_file}")
    if summary.skipped_failed:
        console.print(
            f"{summary.skipped_failed} row(s) failed in an earlier run (their shards are finished); "
            f"see {summary_file}, fix the inputs and rerun with --overwrite"
        )
    if summary.stopped:
        console.print(f"[red]stopped:[/] {escape(summary.stopped)}", highlight=False)
