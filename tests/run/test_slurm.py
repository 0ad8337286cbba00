"""`--cluster slurm` against a real slurmctld (scripts/slurm-local.sh start; CI starts one): the
demo job end to end, a request SLURM cannot satisfy, a worker killed by its walltime, Ctrl-C and
SIGTERM. Without a cluster that answers `sinfo` these skip with one line; under CI=true a missing
cluster is a failure. The settings' checks at the top need no cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _runner_helpers import job, make_dataset, shard_bytes, sleep_factory

from difaug.core.config import SLURM_KEYS, ConfigError, RuntimeConfig, resolve_job
from difaug.core.folderlock import FolderLock
from difaug.run.cluster import slurm_kwargs
from difaug.run.driver import run
from difaug.run.layout import PLAN_FILE

DIFAUG = [sys.executable, "-m", "difaug"]


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """The one-node cluster, with the Dask scheduler and workers on the loopback interface: the
    worker jobs run on this node, and tests send no traffic beyond 127.0.0.1 (dask-jobqueue would
    otherwise use the machine's own network address)."""
    import importlib.util

    if importlib.util.find_spec("dask_jobqueue") is None:
        reason = "dask-jobqueue is not installed (pip install 'difaug[slurm]')"
    elif _sinfo_answers():
        import dask

        with pytest.MonkeyPatch.context() as mp, dask.config.set({"jobqueue.slurm.interface": "lo"}):
            mp.setenv("DASK_JOBQUEUE__SLURM__INTERFACE", "lo")  # for the CLI subprocesses
            yield
        return
    else:
        reason = "no SLURM cluster answers `sinfo` (start one: sudo scripts/slurm-local.sh start)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def _worker_jobs() -> list[str]:
    done = subprocess.run(["squeue", "-h", "-n", "difaug-worker", "-o", "%i"], capture_output=True, text=True)
    return done.stdout.split()


def _no_worker_jobs(deadline_s: float = 30) -> bool:
    end = time.monotonic() + deadline_s
    while _worker_jobs():
        if time.monotonic() > end:
            return False
        time.sleep(1)
    return True


# ----------------------------------------------------------------------------- settings (no cluster)


def test_a_slurm_section_sets_the_flags_keys_and_an_unknown_key_names_the_valid_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        "manifest: m.csv\nout: o\nslurm:\n  partition: gpu\n  cores: 4\n  gpus: 1\n"
        "  extra: ['--qos=long', '--constraint=a100']\n"
    )
    rt = resolve_job(cfg, slurm_cores=8).runtime  # a flag beats the YAML
    assert (rt.slurm_partition, rt.slurm_cores, rt.slurm_gpus) == ("gpu", 8, 1)
    kw = slurm_kwargs(rt)
    assert kw["queue"] == "gpu" and kw["cores"] == 8 and kw["processes"] == 1
    assert kw["job_extra_directives"] == ["--gres=gpu:1", "--qos=long", "--constraint=a100"]
    assert kw["worker_extra_args"] == ["--resources", "GPU=1"]
    cfg.write_text("manifest: m.csv\nout: o\nslurm:\n  queue: gpu\n")
    with pytest.raises(ConfigError, match="unknown slurm key.*queue; valid keys: " + ", ".join(SLURM_KEYS)):
        resolve_job(cfg)


def test_the_defaults_make_a_worker_job_and_bad_forms_are_refused() -> None:
    kw = slurm_kwargs(RuntimeConfig(cluster="slurm").validate())
    assert kw["queue"] is None and kw["memory"] and kw["walltime"] and kw["job_extra_directives"] == []
    for bad in ({"slurm_memory": "lots"}, {"slurm_walltime": "4h"}, {"slurm_cores": 0}, {"worker_wait": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RuntimeConfig(**bad).validate()


def test_a_scheduler_address_with_nothing_there_is_one_line_and_no_plan(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = subprocess.run(
        [*DIFAUG, "generate", "-m", str(m), "-o", str(out), "--scheduler-address", "tcp://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and time.monotonic() - t0 < 60
    assert "no Dask scheduler answers" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (out / PLAN_FILE).exists()


# ----------------------------------------------------------------------------- on the cluster


@pytest.mark.slow
def test_the_demo_job_through_slurm_matches_sync(
    slurm: None, tmp_path: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # sbatch writes the worker's slurm-JOBID.out where it is called
    m = make_dataset(tmp_path / "d", 4, sizes=[(96, 64), (64, 64)])
    cfg = {"condition": "hed", "model": str(tiny_models), "num_aux": 2, "shard_size": 2}
    rt = {"cluster": "slurm", "slurm_memory": "4GB", "worker_wait": 300}
    on_slurm = run(job(m, tmp_path / "slurm", runtime=rt, **cfg))
    sync = run(job(m, tmp_path / "sync", runtime={"cluster": "sync"}, **cfg))
    assert on_slurm.ok and sync.ok and on_slurm.images == 8
    # The worker job runs this venv's Python on this machine's CPU: the same bytes (no tolerance).
    assert shard_bytes(tmp_path / "slurm") == shard_bytes(tmp_path / "sync")
    assert _no_worker_jobs()  # closing the cluster cancelled its job


def test_a_request_slurm_cannot_satisfy_is_one_line_before_the_plan(slurm: None, tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = subprocess.run(
        [*DIFAUG, "generate", "-m", str(m), "-o", str(out), "--cluster", "slurm", "--slurm-memory", "9999GB"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and time.monotonic() - t0 < 120, done.stderr
    assert "SLURM refuses the worker job" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (out / PLAN_FILE).exists()


@pytest.mark.slow
def test_a_worker_killed_by_its_walltime_is_replaced_and_the_job_finishes(
    slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # sbatch writes the worker's slurm-JOBID.out where it is called
    # 8 shards of 2 rows, 2 images each at 4 s an image: 128 s of work, twice one job's 1-minute
    # walltime (SLURM's shortest), so the first worker job is killed mid-run whatever its start-up.
    m = make_dataset(tmp_path / "d", 16)
    rt = {"cluster": "slurm", "slurm_memory": "2GB", "slurm_walltime": "00:01:00", "worker_wait": 300}
    s = run(job(m, tmp_path / "out", runtime=rt, shard_size=2), generator_factory=sleep_factory(4000))
    assert s.ok and s.done == 16
    assert s.workers_replaced >= 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["workers_replaced"] >= 1


@pytest.mark.slow
def test_a_replacement_that_cannot_start_ends_the_run_with_one_line(
    slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker job reaches its walltime while the partition takes no new job, so no worker
    comes back: after --worker-wait the run stops with one line saying what SLURM answers, the
    finished shards kept and the summary written."""
    from difaug.run.cluster import ClusterError

    monkeypatch.chdir(tmp_path)
    m = make_dataset(tmp_path / "d", 16)
    rt = {"cluster": "slurm", "slurm_memory": "2GB", "slurm_walltime": "00:01:00", "worker_wait": 60}
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout
    partition = partition.split()[0].rstrip("*")

    def close_the_partition_once_a_worker_runs() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end and not any(_running(j) for j in _worker_jobs()):
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], check=True)

    closer = threading.Thread(target=close_the_partition_once_a_worker_runs, daemon=True)
    closer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ClusterError) as stopped:
            run(job(m, tmp_path / "out", runtime=rt, shard_size=2), generator_factory=sleep_factory(4000))
    finally:
        closer.join(timeout=130)
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=UP"], check=True)
    assert time.monotonic() - t0 < 200
    message = str(stopped.value)
    # One line naming the wait and what SLURM answers about the worker jobs.
    assert message.startswith("no SLURM worker for 60 s mid-run (--worker-wait): ") and "\n" not in message
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"] == message and 0 < summary["done"] < 16
    assert summary["done"] + summary["not_run"] + summary["failed"] == 16
    assert _no_worker_jobs()


def _running(job_id: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip() == "RUNNING"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_exits_non_zero_cancels_the_jobs_and_writes_the_summary(
    slurm: None, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    # A worker that cannot start for a while: the run is waiting for it when the signal comes.
    proc = subprocess.Popen(
        [*DIFAUG, "generate", "-m", str(m), "-o", str(out), "--cluster", "slurm", "--no-progress",
         "--slurm-extra", "--begin=now+600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    end = time.monotonic() + 120
    while time.monotonic() < end and not _worker_jobs():
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"interrupted ({sig.name})" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == f"interrupted ({sig.name})" and summary["not_run"] == 2
    assert _no_worker_jobs()
    with FolderLock(str(out), command="test"):  # let go of: taken at once
        pass
