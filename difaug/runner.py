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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difaug import plan as plan_mod
from difaug import shards
from difaug.config import Job
from difaug.manifest import Manifest, RowProblem, Sample, read_manifest, repeated_ids
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


@dataclass
class RunSummary:
    """Counts are manifest rows (support samples) of the plan, unless named images/shards."""

    out: str
    rows: int
    shards: int
    done: int = 0  # rows that got all their images in this run
    failed: int = 0  # rows recorded as failed in this run (bad input, or a shard that kept failing)
    skipped: int = 0  # rows of shards finished before this run
    skipped_failed: int = 0  # of those, rows that had failed back then
    images: int = 0  # images written in this run
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: list[int] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # this run's failures
    seconds: float = 0.0
    dashboard: str = ""

    @property
    def ok(self) -> bool:
        """Every planned row has its images (now or from an earlier run)."""
        return self.failed == 0 and self.skipped_failed == 0

    def reconcile(self) -> None:
        total = self.done + self.failed + self.skipped
        if total != self.rows:
            raise RuntimeError(
                f"summary does not add up: done {self.done} + failed {self.failed} + skipped "
                f"{self.skipped} = {total}, but the plan has {self.rows} rows"
            )


# ----------------------------------------------------------------------------- validation


def _validate(manifest: Manifest, samples: Sequence[Sample]) -> list[RowProblem]:
    """Problems of `samples` from `difaug.manifest.validate_manifest` (files exist and decode,
    sizes agree, the mask has foreground, …)."""
    if not samples:
        return []
    try:
        from difaug.manifest import validate_manifest
    except ImportError:  # an older manifest module: the shard task still catches bad files
        return []
    return validate_manifest(Manifest(path=manifest.path, samples=list(samples), problems=[]))


def pre_failures(manifest: Manifest, pending: Sequence[plan_mod.ShardRange]) -> dict[int, dict]:
    """Row → failure, for rows of pending shards that cannot be generated: rows the manifest reader
    could not normalise (stage "manifest") and rows that fail validation (stage "validate")."""
    in_pending = _in_ranges(pending)
    by_row = {s.row: s for s in manifest.samples}
    out: dict[int, dict] = {}
    for p in manifest.problems:
        if in_pending(p.row):
            reason = f"{p.column}: {p.reason}" + (f" ({p.file})" if p.file else "")
            if p.row in out:
                out[p.row]["reason"] += f"; {reason}"
            else:
                out[p.row] = failure(None, "manifest", reason, row=p.row)
    for s, reason in repeated_ids(manifest.samples):
        if in_pending(s.row) and s.row not in out:
            out[s.row] = failure(s, "validate", reason)
    todo = [s for s in manifest.samples if in_pending(s.row) and s.row not in out]
    for p in _validate(manifest, todo):
        sample = by_row.get(p.row)
        reason = f"{p.column}: {p.reason}" + (f" ({p.file})" if p.file else "")
        if p.row in out:
            if out[p.row]["stage"] == "validate":
                out[p.row]["reason"] += f"; {reason}"
        elif p.row > 0:
            out[p.row] = failure(sample, "validate", reason, row=p.row)
    return out


def _in_ranges(ranges: Sequence[plan_mod.ShardRange]) -> Callable[[int], bool]:
    starts = [r.start for r in ranges]

    def contains(row: int) -> bool:
        i = bisect.bisect_right(starts, row) - 1
        return i >= 0 and ranges[i].start <= row < ranges[i].stop

    return contains


def iter_specs(
    out: str,
    plan: dict,
    manifest: Manifest,
    pending: Sequence[plan_mod.ShardRange],
    failures: dict[int, dict],
) -> Iterator[ShardSpec]:
    rows = [s.row for s in manifest.samples]  # ascending: the reader keeps file order
    for r in pending:
        lo, hi = bisect.bisect_left(rows, r.start), bisect.bisect_left(rows, r.stop)
        samples = tuple(s for s in manifest.samples[lo:hi] if s.row not in failures)
        pre = tuple(failures[row] for row in range(r.start, r.stop) if row in failures)
        yield ShardSpec(r.index, r.start, r.stop, samples, pre, out, plan["plan_hash"])


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


def _task_failures(spec: ShardSpec, error: BaseException) -> list[dict]:
    """A shard that failed after its retries: every row of it is a failure (no marker is written,
    so a rerun tries the shard again)."""
    reason = f"{type(error).__name__}: {error}".strip()[:500]
    pre = {f["row"]: f for f in spec.failures}
    by_row = {s.row: s for s in spec.samples}
    return [
        pre.get(row) or failure(by_row.get(row), "task", reason, row=row)
        for row in range(spec.start, spec.stop)
    ]


def _run_sync(
    specs: Iterator[ShardSpec],
    job: Job,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    on_done: Callable[[ShardSpec, dict], None],
    on_error: Callable[[ShardSpec, BaseException], None],
    progress: _Progress,
) -> None:
    for spec in specs:
        for attempt in range(job.runtime.retries + 1):
            try:
                stats = run_shard(spec, job, *factories, progress=progress.shard_progress)
            except Exception as e:
                if attempt == job.runtime.retries:
                    on_error(spec, e)
            else:
                on_done(spec, stats)
                break


def _run_dask(
    client: Any,
    specs: Iterator[ShardSpec],
    job: Job,
    factories: tuple[GeneratorFactory | None, ConditionFactory | None],
    on_done: Callable[[ShardSpec, dict], None],
    on_error: Callable[[ShardSpec, BaseException], None],
    progress: _Progress,
    resources: dict[str, int] | None,
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
        while len(in_flight) < limit:
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
) -> RunSummary:
    """Run (or resume) `job`; returns the summary. Raises PlanError / ManifestError / ConfigError /
    ModelLoadError before any work starts when the job cannot run.

    `generator_factory(cfg, runtime)` builds the image generator on each worker (default:
    `AuxGenerator.from_config`); `condition_factory(cfg, runtime)` the condition (default:
    `make_condition`). Both must be picklable: module-level functions or functools.partial."""
    from rich.console import Console
    from rich.markup import escape

    from difaug.cluster import dashboard_text, gpu_resources, open_client, uses_client

    console = console or Console()
    t0 = time.perf_counter()
    # The worker's model-cache key pickles the factories: an unpicklable one fails here, before
    # the plan is written, rather than in every task.
    factory_key(
        generator_factory or default_generator_factory, condition_factory or default_condition_factory, job
    )
    factories = (generator_factory, condition_factory)

    if generator_factory is None:
        _preflight(job)
    manifest = read_manifest(job.manifest)
    the_plan = plan_mod.build_plan(job, manifest)
    finished = plan_mod.prepare_run_dir(job, the_plan)
    ranges = plan_mod.shard_ranges(the_plan)
    pending = [r for r in ranges if r.index not in finished]
    # The speed settings that need the plan: compile "auto" off for short jobs, the compile cache.
    from dataclasses import replace

    from difaug.models import runtime_for_plan

    planned_images = sum(len(r) for r in pending) * job.config.num_aux
    job = replace(job, runtime=runtime_for_plan(job.runtime, job.out, planned_images))
    summary = RunSummary(out=job.out, rows=the_plan["rows"], shards=len(ranges))
    _count_skipped(summary, Path(job.out), finished)
    console.print(
        f"plan: {the_plan['rows']} rows in {len(ranges)} shards of {job.config.shard_size} → {job.out} "
        f"({len(finished)} shards already done, {len(pending)} to do)",
        highlight=False,
    )
    failures = pre_failures(manifest, pending)
    if failures:
        console.print(
            f"validation: {len(failures)} row(s) cannot be generated; they are recorded as failures"
        )
    specs = iter_specs(job.out, the_plan, manifest, pending, failures)
    x = job.config.num_aux

    def on_done(spec: ShardSpec, stats: dict) -> None:
        summary.done += stats["done"]
        summary.failed += stats["failed"]
        summary.images += stats["images"]
        summary.shards_done += 1
        summary.failures.extend(stats["failures"])
        progress.shard_finished(spec.index, stats["images"], spec.num_rows * x)

    def on_error(spec: ShardSpec, error: BaseException) -> None:
        rows = _task_failures(spec, error)
        summary.failed += len(rows)
        summary.failed_shards.append(spec.index)
        summary.failures.extend(rows)
        progress.shard_finished(spec.index, 0, spec.num_rows * x)
        reason = escape(rows[0]["reason"])
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
                _run_dask(client, specs, job, factories, on_done, on_error, progress, resources)
        else:
            _run_sync(specs, job, factories, on_done, on_error, progress)
    finally:
        progress.close()
    shards.remove_temp_files(job.out)  # left by workers killed mid-write (never read)
    summary.seconds = time.perf_counter() - t0
    summary.failures.sort(key=lambda f: f["row"])
    summary.failed_shards.sort()
    summary.reconcile()
    _write_summary(summary, Path(job.out))
    print_summary(summary, console)
    return summary


def _count_skipped(summary: RunSummary, out: Path, finished: set[int]) -> None:
    for index in sorted(finished):
        stats = shards.load_json(shards.stats_path(out, index))
        summary.skipped += stats["done"] + stats["failed"]
        summary.skipped_failed += stats["failed"]
        summary.shards_skipped += 1


def _write_summary(summary: RunSummary, out: Path) -> None:
    data = asdict(summary) | {"ok": summary.ok}
    previous = [f for s in shards.load_stats(out) for f in s.get("failures", [])]
    seen = {(f["row"], f["stage"]) for f in summary.failures}
    data["all_failures"] = sorted(
        summary.failures + [f for f in previous if (f["row"], f["stage"]) not in seen], key=lambda f: f["row"]
    )
    shards.write_json(out / plan_mod.SUMMARY_FILE, data)


def print_summary(summary: RunSummary, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

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
    table.add_row("[bold]planned", f"[bold]{summary.rows}", f"[bold]{summary.shards}")
    console.print(table)
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    console.print(
        f"{summary.images} images in {summary.seconds:.1f} s ({rate:.2f} images/s)", highlight=False
    )
    console.print(
        f"rows: done {summary.done} + failed {summary.failed} + skipped {summary.skipped} = {summary.rows}",
        highlight=False,
    )
    for f in summary.failures[:MAX_LISTED_FAILURES]:
        sid = f" {f['sample_id']}" if f["sample_id"] else ""
        what = escape(f"{sid} [{f['stage']}] {f['reason']}")  # reasons hold brackets ([Errno 2] …)
        console.print(f"  [red]row {f['row']}[/]{what}", highlight=False)
    more = len(summary.failures) - MAX_LISTED_FAILURES
    if more > 0:
        console.print(f"  … and {more} more: see {Path(summary.out) / plan_mod.SUMMARY_FILE}")
    if summary.skipped_failed:
        console.print(
            f"{summary.skipped_failed} row(s) failed in an earlier run (their shards are finished); "
            f"see {Path(summary.out) / plan_mod.SUMMARY_FILE}, fix the inputs and rerun with --overwrite"
        )
