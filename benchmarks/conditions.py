"""Conditions per second for `seg`, `hed` and `scribble` at 512×512, batch sizes 1, 8 and 32.

Measures the whole `Condition.__call__` (host resize, batched HED forward + upsampling + sigmoid on
the device, masking/threshold, the uint8 maps back on the host) on synthetic 512×512 samples, after
a warm-up call (per batch size on CUDA). HED weights: `--hed-weights` (hub id, folder or file); if they
cannot be found, a random `ControlNetHED.pth` is built in a temp folder, which is the same
architecture and so the same speed.

Run on CPU (default here; short):   python benchmarks/conditions.py --quick
Run on a GPU (fp16, channels_last): python benchmarks/conditions.py --device cuda --iters 20
Figures are printed, never asserted. The last line is `conditions_hed_per_s_batch8: N`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _inputs(n: int, size: int = 512) -> list:
    import cv2

    from difaug.conditions import ConditionInput
    from difaug.inputs.manifest import Sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(0, 255, (size // 16, size // 16, 3)).astype(np.uint8)
        image = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((size, size), np.uint8)
        cv2.ellipse(mask, (size // 2, size // 2), (size // 4, size // 3), 0, 0, 360, 1, -1)
        sample = Sample(i + 1, f"b{i}", "", "", 1, "airplane", "pascal")
        out.append(ConditionInput(sample, image, mask))
    return out


def _weights(requested: str, tmp: Path) -> str:
    from difaug.conditions.hed import HedWeightsError, make_random_hed_weights, resolve_hed_weights

    try:
        resolve_hed_weights(requested)
        return requested
    except HedWeightsError:
        print(f"# HED weights {requested} not available: timing a random network of the same shape")
        return str(make_random_hed_weights(tmp / "Annotators", seed=0).parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda / cpu (default: CUDA if present)")
    parser.add_argument("--dtype", default=None, help="float16 / float32 (default: fp16 on CUDA)")
    parser.add_argument("--hed-weights", default="lllyasviel/Annotators")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per point")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: batches 1 and 8, 1 call")
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()

    import torch

    from difaug.conditions import make_condition
    from difaug.conditions.hed import resolve_device

    device = resolve_device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.quick:
        batch_sizes = [b for b in batch_sizes if b <= 8] or [1]
    iters = args.iters or (1 if args.quick or device.type == "cpu" else 10)
    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch threads {torch.get_num_threads()}, resolution {args.resolution}, iters {iters}")  # fmt: skip

    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(args.hed_weights, Path(tmp))
        for name in ("seg", "hed", "scribble"):
            cond = make_condition(
                name,
                resolution=args.resolution,
                hed_weights=weights,
                device=args.device,
                dtype=args.dtype,
                batch_size=max(batch_sizes),
            )
            cond(_inputs(1, args.resolution))  # warm-up: lazy imports, allocator
            for bs in batch_sizes:
                batch = _inputs(bs, args.resolution)
                if device.type == "cuda":
                    cond(batch)  # cudnn picks kernels per shape; on CPU this would only double the run
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(iters):
                    cond(batch)
                elapsed = time.perf_counter() - start
                results[(name, bs)] = bs * iters / elapsed
                print(f"conditions_{name}_per_s_batch{bs}: {results[(name, bs)]:.2f}", flush=True)
    hed8 = results.get(("hed", 8))
    print(
        f"conditions_hed_per_s_batch8: {hed8:.2f}" if hed8 is not None else "conditions_hed_per_s_batch8: nan"
    )


if __name__ == "__main__":
    main()
