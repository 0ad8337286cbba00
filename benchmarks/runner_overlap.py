"""Overlap efficiency of the shard task: does host work hide behind device work?

A stand-in generator (`difaug.testing.standins.SleepGenerator`) sleeps T ms per image with the GIL released,
as a GPU kernel would; everything else is real: reading + decoding the 512² demo-like photos, the
`seg` condition (host work; HED would add its network), resize-back, PNG encoding, Parquet writes.
If the three stages overlap, throughput approaches the device bound 1000/T images/s:

    efficiency = measured images/s ÷ (1000 / T)    target ≥ 0.95 at T = 125 ms, ≥ 0.9 at T = 40 ms

Measured from the shards' own timestamps (first start → last finish), so manifest validation and
model loading are excluded. The job has several shards, as a real one does: a worker overlaps one
shard's last encodes and its write with the next shard's generation, so only the first shard's
head and the last one's tail remain outside the device time (`--shard-size 64` with the default 64
samples makes a one-shard job, where nothing hides that tail). On a GPU machine, run it with the
real generator's timing in mind:

    python benchmarks/runner_overlap.py                  # T = 125 ms, 64 samples × 4 images, 4 shards
    python benchmarks/runner_overlap.py --ms 40          # the LCM rate (25 images/s per GPU)
    python benchmarks/runner_overlap.py --ms 60 --samples 128 --cluster local
    python benchmarks/runner_overlap.py --quick          # ~10 s smoke run (16 samples, 2 shards)

(Here: 2 CPU cores, no GPU. The sleeping stage costs no CPU, so the host stages get both cores.)
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

from difaug.run.driver import run
from difaug.run.records import ShardStats
from difaug.run.verify import verify_run
from difaug.testing.standins import make_bench_set, sleep_generator_factory, small_job


def span(out: Path) -> tuple[float, list[ShardStats]]:
    stats = [c.stats for c in verify_run(out).done if c.stats]
    start = min(datetime.fromisoformat(s.started) for s in stats)
    end = max(datetime.fromisoformat(s.finished) for s in stats)
    return (end - start).total_seconds(), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 samples in shards of 8 (a ~10 s run)")
    ap.add_argument("--ms", type=float, default=125.0, help="stand-in device time per image")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--num-aux", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--condition", default="seg")
    ap.add_argument("--cluster", default="sync", choices=("sync", "local"))
    args = ap.parse_args()
    n = 16 if args.quick else args.samples
    shard_size = 8 if args.quick else args.shard_size
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_bench_set(Path(tmp) / "data", n)
        out = Path(tmp) / "out"
        j = small_job(
            manifest, out, condition=args.condition, num_aux=args.num_aux, resolution=512,
            shard_size=shard_size, runtime={"cluster": args.cluster, "batch_size": args.batch_size},
        )  # fmt: skip
        t0 = time.perf_counter()
        summary = run(j, generator_factory=functools.partial(sleep_generator_factory, ms_per_image=args.ms))
        wall = time.perf_counter() - t0
        seconds, stats = span(out)
    images = summary.images
    rate = images / seconds
    ideal = 1000.0 / args.ms
    busy: dict[str, float] = {}
    for s in stats:
        for k, v in s.seconds.items():
            busy[k] = busy.get(k, 0.0) + v
    print(f"{images} images in {len(stats)} shards, T = {args.ms:g} ms, batch {args.batch_size}, "
          f"condition {args.condition}, cluster {args.cluster}; shards {seconds:.2f} s (whole run {wall:.2f} s)")  # fmt: skip
    print(
        "stage busy ms/image: " + ", ".join(f"{k} {1000 * v / images:.1f}" for k, v in sorted(busy.items()))
    )
    print(f"measured {rate:.3f} images/s, device bound {ideal:.3f} images/s")
    # Other processes' load decides what the host stages get on a shared machine: say what it was.
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"runner_overlap_efficiency: {rate / ideal:.3f}")


if __name__ == "__main__":
    main()
