"""Scaling with the number of Dask workers (LocalCluster, one process and one task per worker).

Each worker runs the real shard task around `SleepGenerator` (T ms per image, GIL released, as one
GPU per worker would). Throughput is taken from the shards' timestamps (first start → last finish),
so cluster start-up and model loading are excluded:

    scaling(N) = images/s with N workers ÷ images/s with 1 worker      target ≥ 0.9 × N

With a GPU per worker, run it on the real cluster's node type, e.g. `--workers 1 2 4 8 --ms 125`.
(Here: 2 CPU cores, no GPU. Sleeping costs no CPU, so N > 2 workers can still scale as long as the
host work of all workers, N × host cost / T, stays under 2 cores; beyond that it cannot.)

    python benchmarks/runner_scaling.py              # 1, 2, 4 workers, T = 125 ms
    python benchmarks/runner_scaling.py --quick
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_overlap import span

from difaug.run.driver import run
from difaug.testing.standins import make_bench_set, sleep_generator_factory, small_job


def throughput(folder: Path, workers: int, args: argparse.Namespace) -> float:
    """Images/s of a job on a fresh `workers`-process cluster, after a warm-up job on it (so the
    workers' first-use costs — imports, first calls — are not in the figure)."""
    from distributed import LocalCluster

    factory = functools.partial(sleep_generator_factory, ms_per_image=args.ms)
    samples = workers * args.shards_per_worker * args.shard_size
    manifest = make_bench_set(folder / "data", samples)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        rt = {
            "cluster": "local",
            "workers": workers,
            "batch_size": 8,
            "scheduler_address": c.scheduler_address,
        }
        settings = {"condition": "seg", "num_aux": args.num_aux, "resolution": 512, "runtime": rt}
        run(
            small_job(manifest, folder / "warm", shard_size=1, limit=workers, **settings),
            generator_factory=factory,
        )
        out = folder / "out"
        summary = run(
            small_job(manifest, out, shard_size=args.shard_size, **settings), generator_factory=factory
        )
    seconds, _ = span(out)
    return summary.images / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 shards per worker of 4 samples × 2 images")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ms", type=float, default=125.0)
    ap.add_argument("--num-aux", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--shards-per-worker", type=int, default=4)
    args = ap.parse_args()
    if args.quick:
        args.num_aux, args.shard_size, args.shards_per_worker = 2, 4, 3
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            rates[n] = throughput(Path(tmp) / f"w{n}", n, args)
            images = n * args.shards_per_worker * args.shard_size * args.num_aux
            print(f"{n} worker(s): {rates[n]:.2f} images/s ({images} images)", flush=True)
    base = rates[args.workers[0]] / args.workers[0]
    for n, r in rates.items():
        print(f"  {n} workers: {r / base:.2f}× the single-worker rate (efficiency {r / base / n:.2f})")
    top = max(rates)
    print(
        f"runner_scaling_{top}_workers: {rates[top] / base:.2f}x (efficiency {rates[top] / base / top:.2f})"
    )


if __name__ == "__main__":
    main()
