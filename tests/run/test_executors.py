"""The in-process executor behind the `Executor` interface: each shard's end handed over once,
retries only where a retry can help, nothing started once the run stops. (The Dask executor runs
in tests/run/test_driver.py and tests/run/test_cluster.py, on a real LocalCluster.)"""

from __future__ import annotations

import errno
import functools
import os
import threading
from pathlib import Path
from typing import Any

from difaug.core.config import JobConfig, RuntimeConfig
from difaug.inputs.manifest import read_manifest
from difaug.run.executors import Execution, Executor, InProcessExecutor
from difaug.run.records import ShardRange, ShardStats
from difaug.run.task import ShardSpec
from difaug.testing.standins import SleepGenerator, make_dataset, small_job

_COUNTING = threading.Lock()


class _FailingGenerator(SleepGenerator):
    """Fails the first `failures` batches it is given in this process (counted in a file, since
    the factory builds one generator per job), with `error`."""

    def __init__(self, counter: Path, failures: int, error: str, batch_size: int):
        super().__init__(1.0, batch_size)
        self.counter, self.failures, self.error = counter, failures, error

    def generate(self, items: Any) -> list[Any]:
        with _COUNTING:  # the counter file is read and written as one step
            calls = int(self.counter.read_text() or 0) if self.counter.exists() else 0
            self.counter.write_text(str(calls + 1))
        if calls < self.failures:
            if self.error == "read-only":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/out/shards")
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        return super().generate(items)


def _failing_factory(cfg: JobConfig, rt: RuntimeConfig, *, counter: str, failures: int, error: str) -> Any:
    return _FailingGenerator(Path(counter), failures, error, rt.batch_size)


class _Ends:
    def __init__(self) -> None:
        self.done: list[int] = []
        self.errors: list[tuple[int, BaseException]] = []
        self.progress: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def execution(
        self, specs: list[ShardSpec], job: Any, factory: Any, *, stop_on_error: bool = False
    ) -> Execution:
        def on_error(spec: ShardSpec, error: BaseException) -> None:
            self.errors.append((spec.shard.index, error))
            if stop_on_error:
                self.stop.set()

        def on_done(spec: ShardSpec, stats: ShardStats) -> None:
            self.done.append(stats.shard)

        return Execution(
            iter(specs),
            job,
            (factory, None),
            on_done,
            on_error,
            lambda *p: self.progress.append(p),
            self.stop,
        )


def _specs(tmp_path: Path, shards: int) -> tuple[list[ShardSpec], Any]:
    m = make_dataset(tmp_path / "d", 2 * shards)
    out = tmp_path / "out"
    out.mkdir()
    samples = read_manifest(m).samples
    specs = [
        ShardSpec(
            ShardRange(i, 1 + 2 * i, 3 + 2 * i), tuple(samples[2 * i : 2 * i + 2]), (), str(out), "h" * 64
        )
        for i in range(shards)
    ]
    return specs, small_job(m, out, runtime={"retries": 1, "batch_size": 4})


def test_a_shard_that_fails_once_is_retried_and_every_end_is_handed_over_once(tmp_path: Path) -> None:
    specs, job = _specs(tmp_path, 3)
    ends = _Ends()
    factory = functools.partial(_failing_factory, counter=str(tmp_path / "calls"), failures=1, error="cuda")
    executor: Executor = InProcessExecutor()
    executor.run(ends.execution(specs, job, factory))
    assert sorted(ends.done) == [0, 1, 2] and ends.errors == []
    assert {index for index, _ in ends.progress} == {0, 1, 2}


def test_a_shard_failing_after_its_retries_is_an_error(tmp_path: Path) -> None:
    specs, job = _specs(tmp_path, 1)
    ends = _Ends()
    factory = functools.partial(_failing_factory, counter=str(tmp_path / "calls"), failures=2, error="cuda")
    InProcessExecutor().run(ends.execution(specs, job, factory))
    assert ends.done == [] and [i for i, _ in ends.errors] == [0]
    assert (tmp_path / "calls").read_text() == "2"  # the first attempt and its one retry


def test_a_permanent_error_is_not_retried_and_stops_new_shards(tmp_path: Path) -> None:
    specs, job = _specs(tmp_path, 5)
    ends = _Ends()
    factory = functools.partial(
        _failing_factory, counter=str(tmp_path / "calls"), failures=99, error="read-only"
    )
    InProcessExecutor().run(ends.execution(specs, job, factory, stop_on_error=True))
    assert ends.done == []
    assert all(isinstance(e, OSError) and e.errno == errno.EROFS for _, e in ends.errors)
    # No retry; the shards already in flight when the run stopped end too, no new one starts.
    assert len(ends.errors) == int((tmp_path / "calls").read_text()) <= 2
