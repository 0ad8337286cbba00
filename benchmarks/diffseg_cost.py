"""What a DiffSeg drift score costs: FLOPs on the real SD1.5, time on the tiny model, capture memory.

What it measures
- FLOPs of the extra pass per scored image on the real SD1.5 architecture (built on the meta
  device from the hub configs in `gpu_throughput.py`, counted with `FlopCounterMode` as there):
  one VAE encode + one UNet evaluation at 512² with the capture processors on `attn1`, plus the
  merging's matrix products (counted analytically: 3 products of 256 anchors × 4096² maps);
  compared with one generated image (20 steps, CFG, ControlNet, VAE decode).
- Seconds per scored image of `DiffSeg.drift_scores` with the tiny random model on this CPU (the tiny
  model's native 64² input, so the attention grid is 16×16; it shows the code path's overhead,
  not SD1.5's cost).
- Peak memory of capturing self-attention at 64×64 tokens (SD1.5's first level: 8 heads, 320
  channels) over `--layers` layers, in a fresh process each: difaug's chunked capture (one
  running 4096² sum) vs the naive way (keep every layer's full per-head map, as an
  `AttnProcessor` that returns its probabilities would). Peak RSS over the process's baseline.

Run: .venv/bin/python benchmarks/diffseg_cost.py [--quick] [--layers 5]
Last line: `diffseg_extra_flops_fraction: F` (extra FLOPs ÷ one generated image's).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TOKENS_SIDE = 64  # SD1.5 at 512²: the highest self-attention grid
HEADS, CHANNELS = 8, 320  # SD1.5's first level


def count_pass_flops(size: int = 512) -> float:
    """FLOPs of DiffSeg's pass at `size`²: VAE encode + one UNet evaluation with the capture."""
    import torch
    from gpu_throughput import SD15_UNET, build_models
    from torch.utils.flop_counter import FlopCounterMode

    from difaug.diffusion import attention_capture, diffseg

    m = build_models("meta", torch.float32)
    unet, vae = m["unet"], m["vae"]
    lat = size // 8
    sink = attention_capture.AttentionSink((lat, lat))
    capture = attention_capture.CaptureSelfAttention(sink)
    unet.set_attn_processor(
        {n: capture if n.endswith("attn1.processor") else p for n, p in unet.attn_processors.items()}
    )
    image = torch.empty(1, 3, size, size, device="meta")
    text = torch.empty(1, 77, SD15_UNET["cross_attention_dim"], device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        latents = vae.encode(image).latent_dist.mean
        unet(latents, diffseg.TIMESTEP, encoder_hidden_states=text)
    return float(fc.get_total_flops())


def merge_flops(tokens: int) -> float:
    """The first merge's products: anchors·log(maps)ᵀ, maps·log(anchors)ᵀ, near·maps (the later
    merges work on ≤ 256 proposals: negligible)."""
    from difaug.diffusion.diffseg import ANCHOR_GRID

    return 3 * 2.0 * ANCHOR_GRID**2 * tokens * tokens


def generation_flops(size: int = 512, steps: int = 20) -> float:
    from gpu_throughput import count_flops, flops_per_image

    return flops_per_image(count_flops(size), steps, cfg=True)


def tiny_seconds_per_image(n_images: int) -> float:
    import torch

    from difaug.diffusion import diffseg
    from difaug.diffusion.loading import load_pipeline
    from difaug.diffusion.specs import ModelSpec
    from difaug.testing.tiny import make_tiny

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_tiny(Path(tmp))
        pipe = load_pipeline(
            ModelSpec(
                base=str(bundle / "stable-diffusion-v1-5"), controlnet=str(bundle / "sd-controlnet-hed")
            ),
            device="cpu",
            dtype="float32",
        )
        seg = diffseg.DiffSeg(pipe)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(n_images)]
        masks = [np.zeros((375, 500), np.uint8) for _ in range(n_images)]
        for m in masks:
            m[100:300, 150:350] = 1
        seg.drift_scores(images[:1], masks[:1], [1])  # warm-up
        t0 = time.perf_counter()
        seg.drift_scores(images, masks, [1] * n_images)
        return (time.perf_counter() - t0) / n_images


def _capture_peak(mode: str, layers: int, queue: mp.Queue) -> None:
    """In a fresh process: peak RSS growth while `layers` attention layers run at 64×64 tokens."""
    import torch
    from diffusers.models.attention_processor import Attention

    from difaug.diffusion import attention_capture

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = TOKENS_SIDE * TOKENS_SIDE
    attn = Attention(CHANNELS, heads=HEADS, dim_head=CHANNELS // HEADS).eval()
    x = torch.randn(1, tokens, CHANNELS)
    kept: list[torch.Tensor] = []
    sink = attention_capture.AttentionSink((TOKENS_SIDE, TOKENS_SIDE))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        for _ in range(layers):
            if mode == "difaug":
                attention_capture.CaptureSelfAttention(sink)(attn, x)
            else:  # naive: the full per-head map of every layer, kept until the end
                q, k = attn.to_q(x), attn.to_k(x)
                q = q.view(1, tokens, HEADS, -1).transpose(1, 2)
                k = k.view(1, tokens, HEADS, -1).transpose(1, 2)
                kept.append(((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((peak - base) * 1024)  # ru_maxrss is in KiB on Linux


def capture_peak_bytes(mode: str, layers: int) -> int:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_capture_peak, args=(mode, layers, queue))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and layers")
    ap.add_argument("--layers", type=int, default=0, help="layers at 64×64 tokens (SD1.5 has 5; quick: 2)")
    ap.add_argument("--images", type=int, default=0, help="tiny-model images to time (quick: 4)")
    args = ap.parse_args()
    layers = args.layers or (2 if args.quick else 5)
    n_images = args.images or (4 if args.quick else 16)

    t0 = time.perf_counter()
    extra = count_pass_flops() + merge_flops(TOKENS_SIDE * TOKENS_SIDE)
    gen = generation_flops()
    print(f"FLOPs on the real SD1.5 architecture at 512² ({time.perf_counter() - t0:.1f} s to count):")
    print(f"  one generated image (20 steps, CFG, ControlNet, decode): {gen / 1e12:8.3f} TFLOP")
    print(f"  DiffSeg pass (VAE encode + UNet + merging)             : {extra / 1e12:8.3f} TFLOP")
    print(f"  extra per scored image                                 : {100 * extra / gen:8.2f} %")

    sec = tiny_seconds_per_image(n_images)
    print(f"tiny model on this CPU, 1 thread: {sec * 1000:.0f} ms per scored image ({n_images} images)")

    mib = 1024 * 1024
    full_map = HEADS * (TOKENS_SIDE**2) ** 2 * 4
    for mode in ("difaug", "naive"):
        peak = capture_peak_bytes(mode, layers)
        print(f"capture peak memory, {layers} layers at 64×64 tokens, {mode:6s}: {peak / mib:8.0f} MiB")
    print(
        f"  (one layer's full per-head map: {full_map / mib:.0f} MiB; difaug keeps one 4096² sum "
        f"of {(TOKENS_SIDE**2) ** 2 * 4 / mib:.0f} MiB and a chunk of {diffseg_chunk_mib():.0f} MiB)"
    )
    print(f"diffseg_extra_flops_fraction: {extra / gen:.4f}")


def diffseg_chunk_mib() -> float:
    from difaug.diffusion.attention_capture import QUERY_CHUNK

    return HEADS * QUERY_CHUNK * TOKENS_SIDE**2 * 4 / (1024 * 1024)


if __name__ == "__main__":
    main()
