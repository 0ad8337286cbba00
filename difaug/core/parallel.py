"""The thread pool that reads files: manifest validation and every dataset builder use it.

Decoding an image or a mask releases the GIL, so threads are enough; a process pool would pay for
pickling arrays. It sits below `manifest` and `datasets` so both import it from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
# Told after each chunk: (label, items done, items in all). The library only reports; the CLI draws
# a bar from it (`difaug.cli._common.progress_bar`).
ProgressFn = Callable[[str, int, int], None]

# Threads beyond the cores add only contention on a local disk; on a network file system pass more
# (`--workers`) to hide the latency.
WORKERS_PER_CORE = 2
MIN_WORKERS = 2
MAX_WORKERS = 32
WORKERS_HELP = (
    f"Reader threads (default: {WORKERS_PER_CORE} per core, between {MIN_WORKERS} and {MAX_WORKERS})."
)


def default_workers() -> int:
    """The default number of reader threads for this machine (see `WORKERS_HELP`)."""
    return max(MIN_WORKERS, min(MAX_WORKERS, WORKERS_PER_CORE * (os.cpu_count() or 1)))


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    label: str = "reading",
) -> Iterator[R]:
    """`map(fn, items)` on a thread pool, results in input order (so output is deterministic).

    Items go to the pool in chunks: one future per file costs about as much as checking a small
    file's header. `progress(label, done, total)` is called after each chunk."""
    workers = workers or default_workers()
    size = max(1, min(64, len(items) // (workers * 8)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]

    def run(chunk: Sequence[T]) -> list[R]:
        return [fn(x) for x in chunk]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = 0
        for chunk, chunk_result in zip(chunks, pool.map(run, chunks), strict=True):
            yield from chunk_result
            done += len(chunk)
            if progress is not None:
                progress(label, done, len(items))
