"""What the shard tasks of one process share, in one object (`ShardProcess`) that keeps its rules:

- at most `MAX_SHARDS_IN_FLIGHT` shards per process (`ShardProcess.shard`), however many threads
  the Dask worker has: while one finishes on the host (last encodes, the write, its marker) the
  other prepares and generates, so the device does not wait at a shard's head or tail, and memory
  stays bounded at two shards' queues and rows;
- one shard at a time in the prepare stage (`ShardTurn.prepare`, held until its last item is
  queued): the condition model and its `fallbacks` counter are that shard's alone meanwhile;
- every generate stage on the process's one device thread, one after the other
  (`ShardTurn.on_device`): torch.compile's CUDA-graph trees are per thread, and the generator's
  warm-up counters are read around one shard's stage;
- a shard's generate stage is queued only once its prepare stage holds the prepare turn, so the
  device runs shards in the order they prepared: shard B's prepare overlaps shard A's last batches,
  A's write overlaps B's generation, and neither waits on the other (B's generate queued first
  would wait for B's items, which wait for A's prepare turn, which waits for room in A's queue,
  which A's generate, queued behind B's, would never drain);
- torch's intra-op thread count, which is process-wide (`TorchThreads`);
- the loaded models (`difaug.run.model_cache.ModelCache`).

`shard_process()` is this process's object; a forked child makes its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from difaug.run.model_cache import ModelCache

T = TypeVar("T")

MAX_SHARDS_IN_FLIGHT = 2


class TorchThreads:
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
        """Pin the count for the block: the same count in every cluster mode is what makes `sync`
        and `local` give identical bytes (Dask workers start with OMP_NUM_THREADS=1). Yields
        whether it pinned them (False when torch is not imported)."""
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


class ShardProcess:
    """The process-wide state of the shard task (see the module docstring for its rules)."""

    def __init__(self, max_shards_in_flight: int = MAX_SHARDS_IN_FLIGHT) -> None:
        self.pid = os.getpid()
        self.models = ModelCache()
        self.torch_threads = TorchThreads()
        self._slots = threading.BoundedSemaphore(max_shards_in_flight)
        self._prepare_turn = threading.Lock()
        self._device = ThreadPoolExecutor(1, thread_name_prefix="difaug-device")

    @contextlib.contextmanager
    def shard(self) -> Iterator[ShardTurn]:
        """One shard's slot in this process (waits while `max_shards_in_flight` are running)."""
        with self._slots:
            yield ShardTurn(self)


class ShardTurn:
    """One shard's way through the process's shared stages: `prepare()` first, then `on_device`."""

    def __init__(self, process: ShardProcess) -> None:
        self._process = process
        self._preparing = threading.Event()  # this shard holds (or held) the prepare turn
        self._prepared = False

    @contextlib.contextmanager
    def prepare(self) -> Iterator[None]:
        """The prepare turn: no other shard of the process prepares until the block ends."""
        if self._prepared:
            raise RuntimeError("a shard takes the prepare turn once")
        self._prepared = True
        with self._process._prepare_turn:
            self._preparing.set()
            yield

    def on_device(self, fn: Callable[[], T], stopped: Callable[[], bool]) -> T | None:
        """Run `fn` on the device thread once this shard holds the prepare turn (see the module
        docstring for why) and return its result; None when `stopped()` turns true before then."""
        while not self._preparing.wait(timeout=0.1):
            if stopped():
                return None
        return self._process._device.submit(fn).result()


_PROCESS: ShardProcess | None = None
_PROCESS_INIT = threading.Lock()


def shard_process() -> ShardProcess:
    """This process's `ShardProcess` (a forked child makes its own: threads do not survive a fork)."""
    global _PROCESS
    with _PROCESS_INIT:
        if _PROCESS is None or _PROCESS.pid != os.getpid():
            _PROCESS = ShardProcess()
        return _PROCESS


@contextlib.contextmanager
def shards_in_flight(n: int) -> Iterator[ShardProcess]:
    """For the block, this process's shard tasks share a fresh `ShardProcess` that runs at most `n`
    shards at once (`n=1`: one shard at a time, so each shard's process CPU is its own, as the
    host-cost benchmark needs, or to compare with the overlapped run)."""
    global _PROCESS
    with _PROCESS_INIT:
        before, _PROCESS = _PROCESS, ShardProcess(n)
    try:
        yield _PROCESS
    finally:
        with _PROCESS_INIT:
            _PROCESS = before
