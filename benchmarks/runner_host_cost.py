"""Host cost per auxiliary image: the CPU the runner spends around the model.

Everything but the model is real: read + decode the 512² demo-like photos and masks, the `seg`
condition (condition prep without the HED network), resize-back, PNG encoding of the aux image and
the condition, Parquet write + stats marker. The model is `SleepGenerator` with T = 0 (it only
builds a photo-like image, cached per sample). The figure is process CPU time per image summed over
all threads (the shards' `seconds.cpu`), i.e. per image per core:

    target ≤ 15 ms per image per core

Per-sample work (read, decode, condition) is shared by the sample's `--num-aux` images (4). Also
printed: the PNG vs JPEG split and this machine's zlib speed, to scale the figure to another CPU.
(Here: 2 slow cores in a VM, where zlib level 1 runs at ~20 MB/s; a server core does 3–5× that.)

    python benchmarks/runner_host_cost.py            # 64 samples × 4 images
    python benchmarks/runner_host_cost.py --quick    # 16 samples
    python benchmarks/runner_host_cost.py --image-format jpeg
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import zlib
from pathlib import Path

from difaug.run.driver import run
from difaug.run.shard_process import shards_in_flight
from difaug.run.verify import verify_run
from difaug.testing.standins import make_bench_set, sleep_generator_factory, small_job


def zlib_mb_per_s() -> float:
    data = os.urandom(1 << 18) * 4  # 1 MiB, partly repetitive
    t0 = time.process_time()
    for _ in range(5):
        zlib.compress(data, 1)
    return 5 / (time.process_time() - t0)


def measure(
    manifest: Path, out: Path, image_format: str, num_aux: int
) -> tuple[float, dict[str, float], int]:
    j = small_job(
        manifest, out, condition="seg", num_aux=num_aux, resolution=512, shard_size=16,
        image_format=image_format, runtime={"cluster": "sync", "batch_size": 8},
    )  # fmt: skip
    # One shard at a time, so each shard's process CPU (`cpu_seconds`) is its own: a worker normally
    # overlaps two shards, and then both count the seconds they share.
    with shards_in_flight(1):
        summary = run(j, generator_factory=functools.partial(sleep_generator_factory, ms_per_image=0.0))
    stats = [c.stats for c in verify_run(out).done if c.stats][1:]  # the first pays one-off warm-ups
    images = sum(s.images for s in stats) or summary.images
    busy: dict[str, float] = {}
    cpu = 0.0
    for s in stats:
        cpu += s.cpu_seconds or 0.0  # the task's process CPU: a total, apart from the stages
        for k, v in s.seconds.items():
            busy[k] = busy.get(k, 0.0) + v
    return 1000 * cpu / images, {k: 1000 * v / images for k, v in busy.items()}, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 samples (two measured shards)")
    ap.add_argument("--samples", type=int, default=80)
    ap.add_argument("--num-aux", type=int, default=4)
    ap.add_argument("--image-format", default="png", choices=("png", "jpeg"))
    args = ap.parse_args()
    n = 32 if args.quick else args.samples
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_bench_set(Path(tmp) / "data", n)
        cpu_ms, busy, images = measure(manifest, Path(tmp) / "out", args.image_format, args.num_aux)
        other = "jpeg" if args.image_format == "png" else "png"
        other_ms, _, _ = measure(manifest, Path(tmp) / "out2", other, args.num_aux)
    print(f"{images} images (after a warm-up shard), 512², condition seg, {args.num_aux} aux per sample")
    print("stage wall ms/image: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(busy.items())))
    print(
        f"{other} instead of {args.image_format}: {other_ms:.1f} ms/image; zlib level 1: {zlib_mb_per_s():.0f} MB/s"
    )
    print(f"runner_host_cost_ms_per_image ({args.image_format}): {cpu_ms:.1f}")


if __name__ == "__main__":
    main()
