"""Kill-safety: a worker killed while it holds a shard, a driver killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _runner_helpers import all_keys, job, make_dataset, shard_bytes, sleep_factory

from difaug.run import layout, verify
from difaug.run.driver import run
from difaug.run.records import Summary


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_killed_while_holding_a_shard(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    m = make_dataset(tmp_path / "d", 12)
    out = tmp_path / "out"
    result: dict[str, Summary | BaseException] = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        j = job(m, out, runtime={"cluster": "local", "scheduler_address": cluster.scheduler_address})

        def drive() -> None:
            try:
                result["summary"] = run(j, generator_factory=sleep_factory(250))  # ~1 s per shard
            except BaseException as e:
                result["summary"] = e

        driver = threading.Thread(target=drive)
        driver.start()

        def busy_worker() -> tuple[str, str] | None:
            for addr, keys in client.processing().items():
                for key in keys:
                    if str(key).startswith("shard-"):
                        return addr, str(key)
            return None

        addr, key = _wait_for(busy_worker, 60, "a worker to start a shard")
        pid = client.run(os.getpid)[addr]
        os.kill(pid, signal.SIGKILL)
        driver.join(timeout=180)
        assert not driver.is_alive()
    summary = result["summary"]
    assert isinstance(summary, Summary), summary
    assert summary.ok and summary.done == 12 and summary.failed == 0
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == 24
    # The shard the dead worker held was finished by another process.
    index = int(key.split("-")[1])
    check = verify.verify_run(out).checks[index]
    assert check.ok and check.stats is not None
    assert check.stats.worker["pid"] != pid
    assert not list((out / "shards").glob(".*.difaug-tmp-*"))


def _generate_cmd(manifest: Path, out: Path, tiny: Path) -> list[str]:
    return [
        sys.executable, "-m", "difaug", "generate", "--manifest", str(manifest), "--out", str(out),
        "--model", str(tiny), "--condition", "hed", "--num-aux", "2", "--resolution", "64", "--detect-resolution", "64",
        "--steps", "2", "--shard-size", "1", "--cluster", "sync", "--batch-size", "4", "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_driver_killed_then_resumed_equals_uninterrupted(tmp_path: Path, tiny_models: Path) -> None:
    m = make_dataset(tmp_path / "d", 6, sizes=[(96, 64), (64, 64)])
    out = tmp_path / "out"
    cmd = _generate_cmd(m, out, tiny_models)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: layout.marker_path(out, 0).exists() or proc.poll() is not None, 240, "first marker")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    markers = {p.name: p.read_bytes() for p in (out / "stats").glob("*.json")}
    assert "00000.json" in markers, proc.stdout.read().decode() if proc.stdout else ""
    if len(markers) == 6:
        pytest.skip("the run finished before the kill landed; nothing to resume")
    # A writer killed mid-write leaves at most a temp file, never a half shard under the real name.
    done_before = set(markers)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped"], summary["done"], summary["shards_done"]) == (
        len(done_before),
        6 - len(done_before),
        6 - len(done_before),
    )
    after = {p.name: p.read_bytes() for p in (out / "stats").glob("*.json")}
    assert len(after) == 6
    assert all(after[name] == markers[name] for name in done_before)  # not regenerated
    assert not list(out.rglob(".*.difaug-tmp-*"))
    # The killed driver left its lock behind: the resume took it over and said so.
    assert "took over the lock" in res.stdout, res.stdout
    # The plan names the command that made it: `inspect` offers it as the fix for broken shards.
    assert layout.read_plan(out).command.startswith("difaug generate --manifest")
    # The uninterrupted run (in-process, same config, same thread settings) gives the same bytes.
    ref = tmp_path / "ref"
    run(
        job(
            m,
            ref,
            condition="hed",
            model=str(tiny_models),
            num_aux=2,
            shard_size=1,
            runtime={"batch_size": 4},
        )
    )
    assert shard_bytes(out) == shard_bytes(ref)


_KILLED_AT_FIRST_WRITE = """
import functools, os, pathlib, sys
from difaug.run.driver import run
from difaug.testing.standins import sleep_generator_factory, small_job

real = pathlib.Path.write_bytes

def write_then_die(self, data):
    real(self, data)
    os._exit(9)  # killed while its first file (the write probe) exists

pathlib.Path.write_bytes = write_then_die
run(small_job(sys.argv[1], sys.argv[2]), generator_factory=functools.partial(sleep_generator_factory, ms_per_image=1))
"""


def test_a_write_probe_left_by_a_killed_driver_is_removed_by_the_next_run(tmp_path: Path) -> None:
    from difaug.core.fsio import TEMP_NAME

    m = make_dataset(tmp_path / "d", 2)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_FIRST_WRITE, str(m), str(out)], capture_output=True
    )
    assert res.returncode == 9, res.stderr.decode()
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and TEMP_NAME.match(left[0]), left  # difaug's temp name, so it is known
    assert run(job(m, out), generator_factory=sleep_factory()).ok
    assert not [p for p in out.rglob("*") if TEMP_NAME.match(p.name)]
