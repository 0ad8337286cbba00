"""What `difaug generate` shows: the runner's events drawn on the terminal, and the summary.

`difaug.run.driver.run` prints nothing; it sends typed events (`difaug.run.driver.RunEvent`) to a sink.
`GenerateView` is the CLI's sink: the notes as lines, the shard progress as a rich bar in images
with images/s and ETA (fed per batch while a shard runs, per shard when it ends), and
`print_summary` the closing tables.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from difaug.core.text import display_text
from difaug.run import driver
from difaug.run.layout import summary_path
from difaug.run.records import Summary

MAX_LISTED_FAILURES = 20
MAX_LISTED_WORKERS = 4  # more: the warm-up line gives min, median and max


class GenerateView:
    """An event sink (`run(job, on_event=view)`); `bar=False` draws no progress bar. Use it as a
    context manager, so the bar is closed however the run ends."""

    def __init__(self, console: Console, bar: bool = True):
        self.console = console
        self.show_bar = bar
        self.finished = 0  # image-equivalents of finished shards (failed rows count X)
        self.generated = 0  # images actually written in this run
        self.live: dict[int, int] = {}
        self.closed: set[int] = set()  # shards whose late progress events are ignored
        self.lock = threading.Lock()  # progress events arrive on the Dask client's thread
        self.t0 = time.perf_counter()
        self.bar: Any = None
        self.task: Any = None
        self.compile_cache = ""  # the workers' compile cache folder ("" = they run eager)
        self.warmups: dict[str, float] = {}  # worker (host:pid) → its warm-up seconds in this run

    def __enter__(self) -> GenerateView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: driver.RunEvent) -> None:
        c = self.console
        if isinstance(event, driver.ShardProgress):
            with self.lock:
                if event.index not in self.closed:
                    self.live[event.index] = event.images
                    self._refresh()
        elif isinstance(event, driver.ShardFinished):
            with self.lock:
                self.closed.add(event.index)
                self.live.pop(event.index, None)
                self.generated += event.images
                self.finished += event.equivalent
                if event.worker:
                    self.warmups[event.worker] = self.warmups.get(event.worker, 0.0) + event.warmup_seconds
                self._refresh()
        elif isinstance(event, driver.PlanMade):
            c.print(
                f"plan: {event.rows} rows in {event.shards} shards of {event.shard_size} → {event.out} "
                f"({event.shards_done} shards already done, {event.shards_todo} to do)",
                highlight=False,
            )
            if event.invalid:
                c.print(
                    f"[yellow]{len(event.invalid)} shard(s) were invalid and are redone:[/] "
                    + escape("; ".join(f"{name} ({reason})" for name, reason in event.invalid.items())),
                    highlight=False,
                )
            self.compile_cache = event.compile_cache
            self._start(event.images_todo)
        elif isinstance(event, driver.LockTakenOver):
            c.print(
                f"[yellow]note:[/] took over the lock of {event.out} left by {event.owner}",
                highlight=False,
            )
        elif isinstance(event, driver.RowsRefused):
            c.print(f"validation: {event.rows} row(s) cannot be generated; they are recorded as failures")
        elif isinstance(event, driver.PromptsCut):
            c.print(
                f"[yellow]note:[/] {event.prompts} prompt(s) cut to {event.limit} tokens by the text encoder "
                "(the shards' markers name them)",
                highlight=False,
            )
        elif isinstance(event, driver.ClusterReady):
            c.print(event.dashboard, highlight=False)
            if event.waiting_for_worker:
                c.print("waiting for a worker…")
        elif isinstance(event, driver.ShardFailed) and not event.stops_run:
            # (a run stopped by an unwritable OUT says so once, in the summary)
            c.print(
                f"[red]shard {event.index} failed after {event.retries} retries:[/] {escape(event.reason)}"
            )

    def _start(self, total_images: int) -> None:
        if not self.show_bar or not total_images or self.bar is not None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.t0 = time.perf_counter()
        self.bar = Progress(
            TextColumn("[bold]generating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images · {task.fields[rate]} img/s · ETA"),
            TimeRemainingColumn(),
            TextColumn("· elapsed"),
            TimeElapsedColumn(),
            console=self.console,
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

    def close(self) -> None:
        if self.bar is not None:
            with self.lock:
                self._refresh()
            self.bar.stop()
            self.bar = None


def warmup_line(compile_cache: str, warmups: dict[str, float]) -> str:
    """The compile cache the workers used and each worker's warm-up (its first calls of each shape,
    compilation or loading it from the cache included), or '' when they ran eager or ran nothing."""
    if not compile_cache or not warmups:
        return ""
    seconds = sorted(warmups.values())
    if len(seconds) <= MAX_LISTED_WORKERS:
        each = ", ".join(f"{name} {warmups[name]:.1f} s" for name in sorted(warmups))
    else:
        median = seconds[len(seconds) // 2]
        each = f"min {seconds[0]:.1f} s, median {median:.1f} s, max {seconds[-1]:.1f} s"
    return f"compile cache {compile_cache} · warm-up of {len(seconds)} worker(s): {each}"


def print_summary(summary: Summary, console: Console) -> None:
    """The closing tables of `difaug generate`: rows and shards done / failed / skipped / not run,
    speed, the first failures, and why the run stopped."""
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
    summary_file = summary_path(summary.out)
    if more > 0:
        console.print(f"  … and {more} more: see {summary_file}")
    if summary.workers_replaced:
        console.print(f"{summary.workers_replaced} SLURM worker job(s) ended (walltime, …) and were replaced")
    if summary.skipped_failed:
        console.print(
            f"{summary.skipped_failed} row(s) failed in an earlier run (their shards are finished); "
            f"see {summary_file}, fix the inputs and rerun with --overwrite"
        )
    if summary.stopped:
        console.print(f"[red]stopped:[/] {escape(summary.stopped)}", highlight=False)
