"""Where the shard tasks run, behind one small interface (`Executor`): in this process
(`InProcessExecutor`, `--cluster sync`, what you want under a debugger) or on a Dask cluster
(`DaskExecutor`). The driver picks one with `open_executor` and talks only to the interface.

An executor is handed an `Execution`: the shards still to run, the job and its factories, where
each shard's end goes (`on_done`, `on_error`) and its per-batch progress (`on_progress`). It keeps a
few shards in flight, retries a shard whose error a retry can fix, and starts none once `stop` is set.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from difaug.core.config import Job, RuntimeConfig
from difaug.run.cluster import (
    ClusterError,
    SlurmWatch,
    dashboard_text,
    gpu_resources,
    open_client,
    uses_client,
    wait_for_worker,
)
from difaug.run.layout import is_permanent
from difaug.run.model_cache import ConditionFactory, GeneratorFactory
from difaug.run.records import ShardStats
from difaug.run.shard_process import MAX_SHARDS_IN_FLIGHT
from difaug.run.task import PROGRESS_TOPIC, ShardSpec, run_shard


@dataclass(frozen=True)
class Execution:
    """What an executor is handed (see the module docstring)."""

    specs: Iterator[ShardSpec]
    job: Job
    factories: tuple[GeneratorFactory | None, ConditionFactory | None]
    on_done: Callable[[ShardSpec, ShardStats], None]
    on_error: Callable[[ShardSpec, BaseException], None]
    on_progress: Callable[[int, int], None]  # (shard index, images so far in this attempt)
    stop: threading.Event  # set when OUT cannot be written: no shard is started after it


class Executor(Protocol):
    def run(self, execution: Execution) -> None:
        """Run every shard of `execution.specs` (until `stop`); return when none is in flight."""
        ...


class InProcessExecutor:
    """The shard tasks in this process, `MAX_SHARDS_IN_FLIGHT` at once (as on a Dask worker): one
    shard's write overlaps the next one's generation. Results, retries and every event (progress
    included) are handled on the calling thread, one at a time. Interrupted, the shards in flight
    are cancelled and waited for, so nothing writes into OUT after the run's lock is let go."""

    def run(self, execution: Execution) -> None:
        ex = execution
        progress: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        cancel = threading.Event()
        attempts: dict[Future[ShardStats], tuple[ShardSpec, int]] = {}
        pool = ThreadPoolExecutor(MAX_SHARDS_IN_FLIGHT, thread_name_prefix="difaug-shard")

        def submit(spec: ShardSpec, attempt: int) -> None:
            future = pool.submit(
                run_shard, spec, ex.job, *ex.factories, progress=lambda *p: progress.put(p), cancel=cancel
            )
            attempts[future] = (spec, attempt)

        try:
            while True:
                while len(attempts) < MAX_SHARDS_IN_FLIGHT and not ex.stop.is_set():
                    spec = next(ex.specs, None)
                    if spec is None:
                        break
                    submit(spec, 0)
                if not attempts:
                    return
                finished, _ = wait(attempts, timeout=0.1, return_when=FIRST_COMPLETED)
                while not progress.empty():
                    ex.on_progress(*progress.get())
                for future in finished:
                    spec, attempt = attempts.pop(future)
                    if _retry(ex, spec, future, attempt):
                        submit(spec, attempt + 1)
        except BaseException:
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _retry(ex: Execution, spec: ShardSpec, future: Future[ShardStats], attempt: int) -> bool:
    """Hand a finished attempt to `on_done` or `on_error`, or say it is to be retried: an error
    that a retry may fix (no retry can fix a permanent one), with retries left, the run not stopping."""
    error = future.exception()
    if error is None:
        ex.on_done(spec, future.result())
    elif not isinstance(error, Exception):
        raise error  # KeyboardInterrupt, SystemExit: the run stops
    elif attempt < ex.job.runtime.retries and not is_permanent(error) and not ex.stop.is_set():
        return True
    else:
        ex.on_error(spec, error)
    return False


class DaskExecutor:
    """The shard tasks on a Dask cluster through `client`, each claiming `resources` of a worker
    (`cluster.gpu_resources`); Dask retries a failed task `retries` times. Progress comes back as
    worker events on `PROGRESS_TOPIC`, handled on the Dask client's thread."""

    def __init__(self, client: Any, resources: dict[str, float] | None) -> None:
        self.client = client
        self.resources = resources
        self.watch: SlurmWatch | None = None  # replaces SLURM worker jobs that ended

    @property
    def workers_replaced(self) -> int:
        return self.watch.replaced if self.watch is not None else 0

    def run(self, execution: Execution) -> None:
        from distributed import as_completed

        ex, client = execution, self.client
        client.subscribe_topic(
            PROGRESS_TOPIC, lambda event: ex.on_progress(event[1]["shard"], event[1]["images"])
        )
        in_flight: dict[str, ShardSpec] = {}
        futures: dict[str, Any] = {}  # what a watch that gave up on the cluster cancels
        pending = as_completed()
        if self.watch is not None:
            self.watch.on_give_up = lambda: client.cancel(tuple(futures.values()))

        def submit_more() -> None:
            limit = self._capacity(ex.job)  # one scheduler query per completed shard, not per submission
            while len(in_flight) < limit and not ex.stop.is_set():
                spec = next(ex.specs, None)
                if spec is None:
                    return
                future = client.submit(
                    run_shard, spec, ex.job, *ex.factories, pure=False, retries=ex.job.runtime.retries,
                    key=f"shard-{spec.shard.index:05d}-{spec.plan_hash[:8]}", resources=self.resources,
                )  # fmt: skip
                in_flight[future.key] = spec
                futures[future.key] = future
                pending.add(future)

        submit_more()
        try:
            for future in pending:
                spec = in_flight.pop(future.key)
                futures.pop(future.key, None)
                if self.watch is not None and self.watch.gave_up:
                    raise ClusterError(self.watch.gave_up)
                if future.status == "finished":
                    ex.on_done(spec, future.result())
                else:
                    ex.on_error(spec, _task_error(future))
                future.release()
                submit_more()
        finally:
            client.unsubscribe_topic(PROGRESS_TOPIC)

    def _capacity(self, job: Job) -> int:
        # A few shards per worker keep every worker busy without the driver holding the whole plan:
        # the ones a worker runs at once (`MAX_SHARDS_IN_FLIGHT`) and one waiting for its turn.
        n = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        per_worker = MAX_SHARDS_IN_FLIGHT + 1
        return max(4, per_worker * job.runtime.workers, per_worker * n)


def _task_error(future: Any) -> BaseException:
    try:
        return future.exception()
    except Exception as e:  # cancelled: no exception object to fetch
        return e


@contextlib.contextmanager
def open_executor(runtime: RuntimeConfig, on_ready: Callable[[str, bool], None]) -> Iterator[Executor]:
    """The executor `runtime` asks for. For a Dask one, `on_ready(dashboard, waiting_for_worker)` is
    called once the client is up (`dashboard`: the dashboard's address or why there is none), and a
    run on a running scheduler or SLURM waits for a first worker to join (it may still be queued);
    the client, and any cluster it started, closes when the block ends."""
    if not uses_client(runtime):
        yield InProcessExecutor()
        return
    with open_client(runtime) as client:
        waits = bool(runtime.scheduler_address or runtime.cluster == "slurm")
        on_ready(dashboard_text(client), waits)
        if waits:
            wait_for_worker(client, runtime)
        slurm = runtime.cluster == "slurm" and not runtime.scheduler_address
        watching = SlurmWatch(client.cluster, runtime.workers, runtime.worker_wait) if slurm else None
        with watching or contextlib.nullcontext() as watch:
            executor = DaskExecutor(client, gpu_resources(client, runtime))
            executor.watch = watch
            yield executor
