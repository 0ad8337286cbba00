"""Peak memory of the driver and of a worker: 1,000-row vs 20,000-row manifest.

The plan is row ranges (no images), the driver keeps a few shards in flight and only small stats
dicts come back, so the driver's and the worker's peak RSS should not grow with the manifest:

    peak RSS (20,000 rows) ÷ peak RSS (1,000 rows) ≤ 1.2, for the driver and for the worker

Each size runs in its own process (peak RSS is per process) with a LocalCluster of one worker; the
driver's figure includes the in-process Dask scheduler. Work per row is made small so the 20k case
finishes in minutes: a handful of 128² demo photos repeated under distinct sample ids, `seg`, one
aux image per row, `SleepGenerator` with T = 0. On a GPU cluster, point `--rows` at your size.

    python benchmarks/runner_memory.py               # 1,000 vs 20,000 rows (a few minutes here)
    python benchmarks/runner_memory.py --quick       # 200 vs 4,000 rows (same 20× ratio)
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from difaug.testing.standins import make_bench_set, small_job


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_case(rows: int) -> dict:
    from distributed import Client, LocalCluster

    from difaug.run.driver import run
    from difaug.testing.standins import sleep_generator_factory

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_bench_set(Path(tmp) / "data", rows, size=128)
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            rt = {"cluster": "local", "scheduler_address": cluster.scheduler_address, "batch_size": 8}
            j = small_job(manifest, Path(tmp) / "out", num_aux=1, resolution=128, shard_size=64, runtime=rt)
            summary = run(j, generator_factory=functools.partial(sleep_generator_factory, ms_per_image=0.0))
            worker = max(client.run(peak_rss_mb).values())
    return {"rows": rows, "images": summary.images, "driver_mb": peak_rss_mb(), "worker_mb": worker}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 vs 4,000 rows")
    ap.add_argument("--rows", type=int, nargs=2, default=[1000, 20000])
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: one size, JSON out
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case)))
        return
    sizes = [200, 4000] if args.quick else args.rows
    results = []
    for rows in sizes:
        res = subprocess.run(
            [sys.executable, __file__, "--case", str(rows)], capture_output=True, text=True, check=True
        )
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{rows:>6} rows: driver peak {r['driver_mb']:.0f} MB, worker peak {r['worker_mb']:.0f} MB "
              f"({r['images']} images)", flush=True)  # fmt: skip
    small, big = results
    d, w = big["driver_mb"] / small["driver_mb"], big["worker_mb"] / small["worker_mb"]
    print(f"runner_memory_ratio_{sizes[1]}_vs_{sizes[0]}: driver {d:.2f}x, worker {w:.2f}x")


if __name__ == "__main__":
    main()
