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

from difaug.run import rundir, shards
from difaug.run.driver import RunSummary, run


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
    result: dict[str, RunSummary | BaseException] = {}
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
    assert isinstance(summary, RunSummary), summary
    assert summary.ok and summary.done == 12 and summary.failed == 0
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == 24
    # The shard the dead worker held was finished by another process.
    index = int(key.split("-")[1])
    stats = shards.load_json(shards.stats_path(out, index))
    assert rundir.verify_run(out).checks[index].ok
    assert stats["worker"]["pid"] != pid
    assert not list((out / "shards").glob(".*.difaug-tmp-*"))


def _generate_cmd(manifest: Path, out: Path, tiny: Path) -> list[str]:
    return [
        sys.executable, "-m", "difaug", "generate", "--manifest", str(manifest), "--out", str(out),
        "--model", str(tiny), "--condition", "hed", "--num-aux", "2", "--resolution", "64", "--detect-resolution", "64",
        "--steps", "2", "--shard-size", "1", "--cluster", "sync", "--batch-size", "4", "--no-progress",
    ]  # fmt: skip


def test_driver_killed_then_resumed_equals_uninterrupted(tmp_path: Path, tiny_models: Path) -> None:
    m = make_dataset(tmp_path / "d", 6, sizes=[(96, 64), (64, 64)])
    out = tmp_path / "out"
    cmd = _generate_cmd(m, out, tiny_models)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: shards.stats_path(out, 0).exists() or proc.poll() is not None, 240, "first marker")
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
    assert rundir.read_plan(out).command.startswith("difaug generate --manifest")
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
