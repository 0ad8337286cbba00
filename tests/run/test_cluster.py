"""Where tasks run: the GPU claim that lets a worker overlap two shards, on a real Dask cluster."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from _runner_helpers import job, make_dataset, sleep_factory, verified_stats

from difaug.core.config import ConfigError, RuntimeConfig
from difaug.run.cluster import GPU_SHARE, THREADS_PER_WORKER, gpu_resources
from difaug.run.driver import run
from difaug.run.shard_process import MAX_SHARDS_IN_FLIGHT


def test_a_shard_task_claims_a_share_of_the_gpu() -> None:
    assert GPU_SHARE * MAX_SHARDS_IN_FLIGHT == 1 and THREADS_PER_WORKER == MAX_SHARDS_IN_FLIGHT
    assert gpu_resources(None, RuntimeConfig(cluster="cuda")) == {"GPU": GPU_SHARE}
    assert gpu_resources(None, RuntimeConfig(cluster="local")) is None
    with pytest.raises(ConfigError, match="--slurm-gpus 1"):
        gpu_resources(None, RuntimeConfig(cluster="slurm", device="cuda"))


def test_a_gpu_worker_runs_two_shard_tasks_at_once(tmp_path: Path) -> None:
    """A worker advertising GPU=1 with two threads (as `--cluster cuda` starts them) holds two
    shard tasks at once: one starts before the other's marker is written. Claiming the whole GPU,
    each task would wait for the previous one to end."""
    from distributed import LocalCluster

    m = make_dataset(tmp_path / "d", 8)  # 4 shards
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=THREADS_PER_WORKER,
        processes=True,
        resources={"GPU": 1},
        dashboard_address=":0",
    ) as cluster:
        j = job(m, out, runtime={"cluster": "local", "scheduler_address": cluster.scheduler_address})
        s = run(j, generator_factory=sleep_factory(50))
    assert s.ok and s.done == 8
    stats = sorted(verified_stats(out), key=lambda x: x.started)
    assert len({x.worker["pid"] for x in stats}) == 1
    assert any(b.started < a.finished for a, b in itertools.pairwise(stats))


def test_cuda_without_a_gpu_or_dask_cuda_is_refused_before_the_plan(tmp_path: Path) -> None:
    from difaug.core.errors import DifaugError
    from difaug.run.layout import PLAN_FILE

    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    with pytest.raises(DifaugError, match=r"dask-cuda|no usable CUDA GPU"):
        run(job(m, out, runtime={"cluster": "cuda"}), generator_factory=sleep_factory())
    assert not (out / PLAN_FILE).exists()
