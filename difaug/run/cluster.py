"""Where the shard tasks run: a Dask client for `--cluster local|cuda|slurm` or `--scheduler-address`.

`sync` has no client at all: the in-process executor (`difaug.run.executors`) calls the same shard
function, which is what you want under a debugger. Optional cluster back-ends import lazily and say which extra to install.

Nothing here waits without a bound: `preflight` asks SLURM (`sbatch --test-only`), the scheduler or
the GPU before the plan is written; `wait_for_worker` gives up after `--worker-wait` seconds, saying
what SLURM answered; `SlurmWatch` replaces worker jobs that ended (walltime, preemption, node failure).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from difaug.core.config import ConfigError, RuntimeConfig
from difaug.core.errors import DifaugError
from difaug.run.shard_process import MAX_SHARDS_IN_FLIGHT

log = logging.getLogger(__name__)

# Dask threads per worker process. The second thread only overlaps one shard's last encodes and its
# write with the next shard's generation: the worker's own locks keep one shard at a time on the
# device (and one model copy per process), so a GPU is never shared by two generate stages.
THREADS_PER_WORKER = MAX_SHARDS_IN_FLIGHT
SLURM_COMMAND_TIMEOUT_S = 60  # one sbatch/squeue call (an unreachable controller retries for long)
POLL_S = 2.0


class ClusterError(DifaugError):
    """The cluster cannot give this run a worker: SLURM refused the job, no worker joined in time,
    the scheduler does not answer, no GPU. One line, exit 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `scancel` and `kill` send), raised like Ctrl-C's KeyboardInterrupt so the same
    path cancels the shards and worker jobs, writes the summary and lets go of the lock."""

    signal_name = "SIGTERM"
    exit_code = 143


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt` (whatever handler
    an import installed); the previous handlers come back after it. Only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated()

    before = (
        signal.signal(signal.SIGTERM, terminated),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def uses_client(runtime: RuntimeConfig) -> bool:
    return bool(runtime.scheduler_address) or runtime.cluster != "sync"


def _missing_extra(module: str, extra: str) -> ConfigError:
    return ConfigError(f"--cluster needs {module}, which is not installed: pip install 'difaug[{extra}]'")


# ----------------------------------------------------------------------------- SLURM


def slurm_kwargs(runtime: RuntimeConfig) -> dict[str, Any]:
    """dask-jobqueue `SLURMCluster` keywords for `runtime`'s `slurm_*` settings: one worker process
    per job with the driver's own Python (the venv must be on a filesystem the nodes share)."""
    directives = [f"--gres=gpu:{runtime.slurm_gpus}"] if runtime.slurm_gpus else []
    directives += [d.strip() for d in runtime.slurm_extra.split(";") if d.strip()]
    return {
        "queue": runtime.slurm_partition or None,
        "account": runtime.slurm_account or None,
        "cores": runtime.slurm_cores,
        "processes": 1,
        "memory": runtime.slurm_memory,
        "walltime": runtime.slurm_walltime,
        "job_extra_directives": directives,
        "worker_extra_args": ["--resources", "GPU=1"] if runtime.slurm_gpus else [],
        "python": sys.executable,
        "job_name": "difaug-worker",
    }


def _import_jobqueue() -> Any:
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise _missing_extra("dask-jobqueue", "slurm")
    handler = signal.getsignal(signal.SIGINT)
    import dask_jobqueue

    # Importing dask_jobqueue installs a SIGINT handler that calls sys.exit() (exit 0 for Ctrl-C):
    # put back the one that raises KeyboardInterrupt.
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGINT, handler)
    return dask_jobqueue


def slurm_command(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command with a bound; a missing command or a timeout is one line."""
    if shutil.which(args[0]) is None:
        raise ClusterError(f"--cluster slurm needs SLURM's `{args[0]}` on PATH (run difaug on a login node)")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=SLURM_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what}: `{args[0]}` gave no answer in {SLURM_COMMAND_TIMEOUT_S} s") from None


def _error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no message"])[-1]


def check_slurm_job(runtime: RuntimeConfig) -> None:
    """Ask SLURM whether it can run the worker job as written (`sbatch --test-only`: nothing is
    queued), so a request it cannot satisfy fails before the plan, in one line."""
    jobqueue = _import_jobqueue()
    try:
        job = jobqueue.slurm.SLURMJob(scheduler="tcp://127.0.0.1:1", name="check", **slurm_kwargs(runtime))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--cluster slurm: {e}") from None
    with tempfile.TemporaryDirectory(prefix="difaug-sbatch-") as tmp:
        script = Path(tmp, "worker.sh")
        script.write_text(job.job_script(), encoding="utf-8")
        done = slurm_command(["sbatch", "--test-only", str(script)], "sbatch --test-only")
    if done.returncode != 0:
        raise ClusterError(
            f"SLURM refuses the worker job ({_error_line(done.stderr + done.stdout)}); change "
            "--slurm-partition/--slurm-cores/--slurm-memory/--slurm-gpus/--slurm-walltime (`slurm:` in the YAML)"
        )


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id → "STATE (reason)" for the jobs squeue still lists (an ended job is not listed)."""
    if not job_ids:
        return {}
    done = slurm_command(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r"], "squeue")
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        states[job_id.strip()] = f"{state} ({reason})" if reason and reason != "None" else state
    return states


def _job_ids(cluster: Any) -> dict[str, str]:
    """Worker name → SLURM job id, for the worker jobs submitted so far."""
    return {
        name: str(job.job_id) for name, job in list(cluster.workers.items()) if getattr(job, "job_id", None)
    }


def jobs_answer(ids: dict[str, str], states: dict[str, str]) -> str:
    """What SLURM says of the worker jobs, for a message: "job 12: PENDING (Resources), …"."""
    return ", ".join(f"job {i}: {states.get(i, 'ended')}" for i in ids.values()) or "no job was submitted"


class SlurmWatch:
    """Keeps `workers` worker jobs queued or running: a job that ended (its walltime, preemption, a
    failed node) is dropped from the cluster's spec and a new one submitted; its shards go back to
    the scheduler, which runs them again on the replacement (Dask's own retry of a lost worker).

    A run left without any worker for `worker_wait` seconds (every replacement still queued) is
    given up on: `gave_up` says why and what SLURM answers, and `on_give_up` (the executor's)
    cancels the shards in flight, so the run ends with that line instead of waiting forever."""

    def __init__(
        self, cluster: Any, workers: int, worker_wait: float, on_give_up: Callable[[], None] | None = None
    ) -> None:
        self.cluster, self.workers, self.worker_wait = cluster, workers, worker_wait
        self.on_give_up = on_give_up
        self.replaced = 0
        self.gave_up = ""
        self._alone_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="difaug-slurm-watch", daemon=True)

    def __enter__(self) -> SlurmWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=SLURM_COMMAND_TIMEOUT_S)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.check()
            except Exception as e:  # squeue down for a moment: try again on the next round
                log.warning("SLURM watch: %s", e)

    def check(self) -> None:
        ids = _job_ids(self.cluster)
        listed = slurm_states(list(ids.values()))
        self._check_alone(ids, listed)
        ended = [name for name, job_id in ids.items() if job_id not in listed]
        if not ended:
            return
        log.warning("SLURM worker job(s) %s ended; submitting replacements", [ids[n] for n in ended])
        self.replaced += len(ended)

        async def replace() -> None:  # on the cluster's event loop, which owns its worker spec
            for name in ended:
                self.cluster.worker_spec.pop(name, None)
                # Its job is gone: nothing to retire (retiring a worker that left waits on a timeout,
                # which would delay the replacement by as much).
                self.cluster.workers.pop(name, None)
            # Drop the ended jobs first: a new spec may reuse a freed name, and a name still among
            # the cluster's workers would not be started again.
            await self.cluster._correct_state()
            self.cluster.scale(self.workers)

        self.cluster.loop.add_callback(replace)

    def _check_alone(self, ids: dict[str, str], listed: dict[str, str]) -> None:
        if self.gave_up:
            return
        if self.cluster.scheduler_info.get("workers"):
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
        if now - self._alone_since < self.worker_wait:
            return
        self.gave_up = (
            f"no SLURM worker for {self.worker_wait} s mid-run (--worker-wait): {jobs_answer(ids, listed)}; "
            "the finished shards are kept: rerun the same command to resume, or raise --worker-wait"
        )
        if self.on_give_up is not None:
            self.on_give_up()


# ----------------------------------------------------------------------------- before the plan


def preflight(runtime: RuntimeConfig) -> None:
    """What must hold for the cluster before the plan is written: the extra is installed, SLURM
    accepts the worker job, the scheduler answers, a GPU is there for `cuda`. Each a bounded check."""
    if runtime.scheduler_address:
        _check_reachable(runtime.scheduler_address)
    elif runtime.cluster == "slurm":
        check_slurm_job(runtime)
    elif runtime.cluster == "cuda":
        if importlib.util.find_spec("dask_cuda") is None:
            raise _missing_extra("dask-cuda", "cuda")
        import torch

        if not torch.cuda.is_available():
            raise ClusterError("--cluster cuda: this machine has no usable CUDA GPU; use --cluster local")


def _check_reachable(address: str) -> None:
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--scheduler-address {address!r}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise ClusterError(
            f"--scheduler-address {address}: no Dask scheduler answers there ({e.strerror or e}); "
            "start one (`dask scheduler`) or drop the flag"
        ) from None


# ----------------------------------------------------------------------------- the client


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
        jobqueue = _import_jobqueue()
        cluster = jobqueue.SLURMCluster(
            **slurm_kwargs(runtime), scheduler_options={"dashboard_address": ":0"}
        )
        cluster.scale(runtime.workers)
        return cluster
    raise ConfigError(f"cluster {runtime.cluster!r} has no Dask client")


def dashboard_text(client: Any) -> str:
    if importlib.util.find_spec("bokeh") is None:
        return "dashboard: not available (pip install bokeh)"
    return f"dashboard: {client.dashboard_link}"


@contextlib.contextmanager
def open_client(runtime: RuntimeConfig) -> Iterator[Any]:
    """A connected `distributed.Client` (closed, with any cluster it started — its SLURM jobs
    cancelled — on exit, an interrupt included)."""
    from distributed import Client

    if runtime.scheduler_address:
        try:
            client = Client(runtime.scheduler_address, timeout=min(runtime.worker_wait, 30))
        except OSError as e:
            raise ClusterError(f"--scheduler-address {runtime.scheduler_address}: {e}") from None
        with client:
            yield client
        return
    cluster = _make_cluster(runtime)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def wait_for_worker(client: Any, runtime: RuntimeConfig) -> None:
    """Wait at most `worker_wait` seconds for a first worker; then one line saying what it waited for
    and what SLURM answered about the worker jobs."""
    deadline = time.monotonic() + runtime.worker_wait
    while time.monotonic() < deadline:
        if client.scheduler_info(n_workers=-1).get("workers"):
            return
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    if runtime.scheduler_address:
        raise ClusterError(
            f"no worker joined the scheduler at {runtime.scheduler_address} within {runtime.worker_wait} s "
            "(--worker-wait); start workers (`dask worker ADDRESS`) or raise --worker-wait"
        )
    cluster = getattr(client, "cluster", None)
    ids = _job_ids(cluster) if cluster is not None else {}
    states = slurm_states(list(ids.values())) if ids else {}
    raise ClusterError(
        f"no SLURM worker joined within {runtime.worker_wait} s (--worker-wait): {jobs_answer(ids, states)}; raise "
        "--worker-wait for a busy queue, or ask for less (--slurm-cores/--slurm-memory/--slurm-gpus)"
    )


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
            "could not be placed one per GPU; pass --slurm-gpus 1 (`slurm: {gpus: 1}` in the YAML)"
        )
    return None
