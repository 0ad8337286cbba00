"""What regenerating drifted images costs (`--min-drift-iou T --max-attempts K`): the tiny model on
the CPU, or (`--models`, `--manifest`) full-size weights on a GPU.

A first run without the option gives the drift histogram; T is read off it as the score a third of
the first attempts fall below (the tiny model's scores tie at 0.0 often, so the share that fails
is printed as measured). The run with T then reports extra images generated per kept image, the
share that passed at each attempt, and the seconds against the run without.

The tiny model's DiffSeg splits its near-uniform attention maps only at low KL thresholds (0.001),
so this benchmark scores it with those (as tests/run/test_regenerate.py does); full-size weights
are scored with the defaults.

    python benchmarks/regenerate.py [--quick] [--samples 12] [--attempts 3]
    # on a GPU, the bundle and supports gpu_e2e.py wrote (random full-size weights, 512²):
    python benchmarks/regenerate.py --models /tmp/e2e/models --manifest /tmp/e2e/data/manifest.csv \
        --device cuda --size 512 --steps 20 --batch-size 16 --compile-cache /tmp/e2e/compile-cache
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def fine_scoring_factory(cfg, runtime):
    from difaug.diffusion import diffseg
    from difaug.diffusion.sampler import AuxGenerator

    gen = AuxGenerator.from_config(cfg, runtime)
    diffseg._SCORERS[gen] = diffseg.DiffSeg(gen.pipe, thresholds=(0.001,) * 3)
    return gen


def _run(
    data: Path, out: Path, models: Path, runtime: dict, tiny: bool, **cfg
) -> tuple[float, list[dict], list]:
    from difaug.adapters.run import open_run
    from difaug.run import shards
    from difaug.run.driver import run
    from difaug.testing.standins import small_job

    settings = {"condition": "hed", "model": str(models), "num_aux": 2, "shard_size": 6} | cfg
    t0 = time.perf_counter()
    summary = run(
        small_job(data, out, runtime=runtime, **settings),
        generator_factory=fine_scoring_factory if tiny else None,
    )
    seconds = time.perf_counter() - t0
    assert summary.ok, summary
    rows = [
        r
        for p in sorted((out / "shards").glob("*.parquet"))
        for r in shards.read_shard(p).drop_columns(["aux_image", "condition_image"]).to_pylist()
    ]
    return seconds, rows, open_run(out).stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 samples")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--models", default="", help="a model bundle (default: the tiny model, built here)")
    ap.add_argument("--manifest", default="", help="with --models: its supports (default: synthetic 64²)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64, help="working resolution")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--compile-cache", default="", help="compile the generator with this cache (CUDA)")
    args = ap.parse_args()
    n = 6 if args.quick else args.samples
    import torch

    from difaug.testing.standins import make_dataset
    from difaug.testing.tiny import make_tiny

    tiny = not args.models
    if tiny:
        torch.set_num_threads(1)
    runtime = {"batch_size": args.batch_size, "device": args.device}
    if args.compile_cache:
        runtime |= {"compile": "on", "compile_cache_dir": args.compile_cache}
    sizes = {"resolution": args.size, "detect_resolution": args.size, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = Path(args.models) if args.models else make_tiny(root / "models")
        data = Path(args.manifest) if args.manifest else make_dataset(root / "data", n, size=(64, 64))
        print(f"{'tiny model' if tiny else models}, {args.device}, {args.size}², {args.steps} steps")
        base_s, first, _ = _run(data, root / "first", models, runtime, tiny, limit=n, **sizes)
        ious = np.array([r["drift_iou"] for r in first], dtype=np.float64)
        t = float(np.quantile(ious, 1 / 3))
        t = t if t > 0 else float(ious[ious > 0].min(initial=0.01))  # ties at 0: the lowest score above
        fails = float((ious < t).mean())
        regen_s, rows, stats = _run(
            data,
            root / "regen",
            models,
            runtime,
            tiny,
            limit=n,
            min_drift_iou=t,
            max_attempts=args.attempts,
            **sizes,
        )
        extra = sum(r["attempts"] - 1 for r in rows) / len(rows)
        passed = [sum(s.passed_at[a] for s in stats) for a in range(args.attempts)]
        never = sum(s.never_passed for s in stats)
        print(
            f"first run: {len(first)} images in {base_s:.1f} s; T = {t:.3f} fails {fails:.0%} of first attempts"
        )
        print(
            f"passed at attempt 0..{args.attempts - 1}: {passed}, never passed: {never} (best attempt kept)"
        )
        print(
            f"with T: {regen_s:.1f} s ({regen_s / base_s:.2f}x), regenerate seconds {sum(s.regenerate_seconds for s in stats):.1f}"
        )
        print(
            f"regenerate: {extra:.2f} extra images per kept image (T {t:.3f}, K {args.attempts}, {fails:.0%} first attempts fail)"
        )


if __name__ == "__main__":
    main()
