"""Batched generation vs one pipeline call per image, on the tiny random model.

Measures images/s of `AuxGenerator.generate` (items of 8 different samples packed into batches of
`--batch` per condition shape, prompt embeddings cached) against what the DifFSS reference script
does: one `StableDiffusionControlNetPipeline` call per auxiliary image, with text prompts and a PIL
condition. Same pipeline object, same items, same run; the ratio is the figure of merit.
The tiny model has almost no arithmetic per image, so this ratio mostly shows the per-call
overhead that batching removes; on a GPU with the real model see `benchmarks/gpu_throughput.py`.

Run:  .venv/bin/python benchmarks/generate.py [--steps 20] [--batch 8] [--threads 2]
GPU:  .venv/bin/python benchmarks/generate.py --device cuda --model /path/to/bundle-or-base --size 512
Last line: `generate_batched_speedup: X`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="bundle or base model (default: a fresh tiny bundle)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--num-aux", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64, help="short side of the conditions")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ap.add_argument("--quick", action="store_true", help="4 samples, 8 steps (what `make bench` runs)")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.steps = min(args.samples, 4), min(args.steps, 8)

    import torch
    from PIL import Image

    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.core.imageio import resize
    from difaug.diffusion.sampler import AuxGenerator, make_work_items
    from difaug.inputs.manifest import Sample
    from difaug.testing.tiny import make_tiny

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    model = args.model or str(make_tiny(Path(tmp.name)))
    cfg = JobConfig(model=model, steps=args.steps, num_aux=args.num_aux).validate()
    gen = AuxGenerator.from_config(cfg, RuntimeConfig(device=args.device, batch_size=args.batch))

    # Mixed samples: two classes of aspect ratio (two shape buckets), a class name each.
    rng = np.random.default_rng(0)
    s = args.size
    items = []
    for i in range(args.samples):
        w, h = (s, s) if i % 2 == 0 else (2 * s, s)
        sample = Sample(row=i + 1, sample_id=f"s{i}", image="", mask="", class_id=1, class_name=f"class {i}")
        cond = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        items += make_work_items(sample, cond, (w + 3, h + 1), cfg)

    def reference() -> list[np.ndarray]:
        out = []
        for it in items:
            img = gen.pipe(
                prompt=it.prompt,
                negative_prompt=it.negative_prompt,
                image=Image.fromarray(it.condition),
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                controlnet_conditioning_scale=cfg.controlnet_scale,
                generator=torch.Generator().manual_seed(it.seed),
            ).images[0]
            out.append(resize(np.asarray(img), it.out_size))
        return out

    def batched() -> list[np.ndarray]:
        gen._embeds.clear()  # count the prompt encodings of a fresh worker
        return [r.image for r in gen.generate(items)]

    def timed(fn):
        sync = torch.cuda.synchronize if torch.device(gen.device).type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0

    gen.sample(items[:1])  # warm-up (allocator, kernels)
    ref_imgs, t_ref = timed(reference)
    bat_imgs, t_bat = timed(batched)
    diff = max(
        int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ref_imgs, bat_imgs, strict=True)
    )
    n = len(items)
    print(f"model: {model}  device: {gen.device}  dtype: {gen.dtype}  threads: {torch.get_num_threads()}")
    print(
        f"{n} images ({args.samples} samples × {args.num_aux}), {args.steps} steps, conditions {s}×{s} and {2 * s}×{s}"
    )
    print(f"one call per image : {n / t_ref:8.2f} images/s  ({t_ref:.2f} s)")
    print(f"batched (batch {args.batch:>2}) : {n / t_bat:8.2f} images/s  ({t_bat:.2f} s)")
    print(f"max |Δ| between the two, uint8 levels: {diff}")
    print(f"generate_batched_speedup: {t_ref / t_bat:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
