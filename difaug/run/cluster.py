"""Where the shard tasks run: a Dask client for `--cluster local|cuda|slurm` or `--scheduler-address`.

`sync` has no client at all: the in-process executor (`difaug.run.executors`) calls the same shard
function, which is what you want under a debugger. Optional cluster back-ends import lazily and say which extra to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

from difaug.core.config import ConfigError, RuntimeConfig
from difaug.run.shard_process import MAX_SHARDS_IN_FLIGHT

# Dask threads per worker process. The second thread only overlaps one shard's last encodes and its
# write with the next shard's generation: the worker's own locks keep one shard at a time on the
# device (and one model copy per process), so a GPU is never shared by two generate stages.
THREADS_PER_WORKER = MAX_SHARDS_IN_FLIGHT


def uses_client(runtime: RuntimeConfig) -> bool:
    return bool(runtime.scheduler_address) or runtime.cluster != "sync"


def _missing_extra(module: str, extra: str) -> ConfigError:
    return ConfigError(f"--cluster needs {module}, which is not installed: pip install 'difaug[{extra}]'")


def _make_cluster(runtime: RuntimeConfig) -> Any:
    if runtime.cluster == "local":
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=runtime.workers,
            threads_per_worker=THREADS_PER_WORKER,
            processes=True,
            dashboard_address=":0",
        )
    if runtime.cluster == "cuda":
        if importlib.util.find_spec("dask_cuda") is None:
            raise _missing_extra("dask-cuda", "cuda")
        from dask_cuda import LocalCUDACluster

        # One worker per visible GPU (dask-cuda's default); GPU=1 lets tasks claim the device
        # (a shard task claims a share of it: `gpu_resources`).
        return LocalCUDACluster(threads_per_worker=THREADS_PER_WORKER, resources={"GPU": 1})
    if runtime.cluster == "slurm":
        if importlib.util.find_spec("dask_jobqueue") is None:
            raise _missing_extra("dask-jobqueue", "slurm")
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**runtime.slurm)
        cluster.scale(runtime.workers)
        return cluster
    raise ConfigError(f"cluster {runtime.cluster!r} has no Dask client")


def dashboard_text(client: Any) -> str:
    if importlib.util.find_spec("bokeh") is None:
        return "dashboard: not available (pip install bokeh)"
    return f"dashboard: {client.dashboard_link}"


@contextlib.contextmanager
def open_client(runtime: RuntimeConfig) -> Iterator[Any]:
    """A connected `distributed.Client` (closed, with any cluster it started, on exit)."""
    from distributed import Client

    if runtime.scheduler_address:
        with Client(runtime.scheduler_address) as client:
            yield client
        return
    cluster = _make_cluster(runtime)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


# What one shard task claims of a worker's `GPU=1`: the two shards a worker overlaps fit on its
# one GPU (one generates while the other prepares or writes); a whole GPU would allow only one.
GPU_SHARE = 1 / MAX_SHARDS_IN_FLIGHT


def gpu_resources(client: Any, runtime: RuntimeConfig) -> dict[str, float] | None:
    """`{"GPU": GPU_SHARE}` when tasks should claim a GPU: on dask-cuda, for an explicit CUDA
    device, or when the cluster's workers advertise a GPU resource. Never on workers that lack it
    (tasks would hang)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}) if client is not None else {}
    advertised = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    if runtime.cluster == "cuda" or advertised:
        return {"GPU": GPU_SHARE}
    if runtime.device.startswith("cuda") and runtime.cluster == "slurm":
        # Claiming a resource no worker advertises would leave every task waiting forever.
        raise ConfigError(
            "--cluster slurm --device cuda: the SLURM workers advertise no GPU resource, so tasks "
            'could not be placed one per GPU; add `worker_extra_args: ["--resources", "GPU=1"]` '
            "to the `slurm:` section of the config"
        )
    return None
