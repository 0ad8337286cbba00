"""What DiffSeg's steps after the UNet pass cost per image at SD1.5's real grid (64×64 tokens).

What it measures
- Synthetic per-resolution self-attention of the real shapes (64², 32², 16², 8² token grids; the
  aggregated map is 4096 × 4096 per image, 256 anchors): softmax of logits that favour a token's
  own Voronoi region and nearby tokens, plus noise, tuned so the KL threshold 1.1 leaves tens of
  segments as on real images (real SD weights cannot be downloaded here).
- Milliseconds per image on this CPU, by step: aggregation, the first merge (the 256-anchor KL
  products), the two later merges (`regroup`), the NMS (`suppress`) and the drift score, at one
  and at two torch threads; and, apart, one 64×64-token layer through the capture processor.
- Per image and step, the tensor operations dispatched (each is at least one kernel launch on
  CUDA, `TorchDispatchMode`) and the host↔device crossings that synchronise on CUDA (tensors
  built from host data, and `.cpu()` results, counted by wrapping those calls). On a GPU each
  crossing stalls the device thread until the queue drains (tens of µs) and each launch costs
  ~5–10 µs of host time; the CPU figures cannot show that, the counts do.
- That the later merges' single matrix product gives the labels of a per-group mean.

With `--device cuda`: SD1.5's UNet and VAE with random fp16 weights built on the GPU, and the
milliseconds per image of each stage of `DiffSeg.drift_scores` (batch 16 at 512²: images → latents, the
UNet pass with the capture, aggregation, the batched merges and NMS, drift score; synchronised
after each), of the whole call unsynchronised, and of the same images scored one call per image
(`diffseg_batched_vs_per_image`: per-image time ÷ batched time, in the same run; with the max
|Δ drift_iou| between the two). `--device cpu --tiny` runs that path on the tiny model.

With `--device cuda --compiled inductor`: only the compiled scoring pass (`CompiledPass`, what a
compiled generator's job scores with) against the eager one, its warm-up and the max |Δ|.

Run: .venv/bin/python benchmarks/diffseg_speed.py [--quick] [--images 2] [--device cuda [--tiny]]
Last line: `diffseg_post_pass_ms_per_image: X` (all steps after the UNet pass, one thread), or
with `--device`: `diffseg_score_ms_per_image: X`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SIDE = 64  # SD1.5 at 512²: the highest self-attention grid
SCALE = 8  # the VAE factor: labels at 512²
LEVELS = (64, 32, 16, 8)  # SD1.5's self-attention grids


def synthetic_maps(seed: int) -> dict[int, Any]:
    """`{N: (1, N, N)}` softmax attention per level; the same regions on every level."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(24, 2, generator=gen)
    maps = {}
    for side in LEVELS:
        axis = (torch.arange(side) + 0.5) / side
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
        region = torch.cdist(pos, centres).argmin(1)
        same = (region[:, None] == region[None, :]).float()
        logits = 4.0 * same - 4.0 * torch.cdist(pos, pos) ** 2
        logits += 1.5 * torch.randn(side * side, side * side, generator=gen)
        maps[side * side] = logits.softmax(-1)[None]
    return maps


def support_mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((SIDE * SCALE, SIDE * SCALE), np.uint8)
    y, x = rng.integers(0, SIDE * SCALE // 2, 2)
    mask[y : y + 200, x : x + 200] = 1
    mask[y : y + 4] = 255
    return mask


class Crossings:
    """Counts host↔device crossings (each synchronises the stream on CUDA): `torch.as_tensor` of
    host data, `Tensor.to` with a device (the module moves only host tensors that way) and
    `Tensor.cpu`. On the CPU these are no-ops, so they are counted by wrapping the calls."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        import torch

        as_tensor, to, cpu = torch.as_tensor, torch.Tensor.to, torch.Tensor.cpu

        def counted_as_tensor(data: Any, *a: Any, **k: Any) -> Any:
            self.count += not isinstance(data, torch.Tensor)
            return as_tensor(data, *a, **k)

        def counted_to(t: Any, *a: Any, **k: Any) -> Any:
            self.count += "device" in k or any(isinstance(x, (str, torch.device)) for x in a)
            return to(t, *a, **k)

        def counted_cpu(t: Any, *a: Any, **k: Any) -> Any:
            self.count += 1
            return cpu(t, *a, **k)

        torch.as_tensor, torch.Tensor.to, torch.Tensor.cpu = counted_as_tensor, counted_to, counted_cpu
        try:
            yield
        finally:
            torch.as_tensor, torch.Tensor.to, torch.Tensor.cpu = as_tensor, to, cpu


def count_ops(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """`fn()` with its dispatched tensor operations and host↔device crossings counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: Counter[str] = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__ not in ("detach.default", "lift_fresh.default"):
                ops[func.__name__] += 1
            return func(*args, **(kwargs or {}))

    crossings = Crossings()
    with Count(), crossings.watch():
        out = fn()
    return out, sum(ops.values()), crossings.count


def run_steps(maps: dict[int, Any], mask: np.ndarray, measure: Callable) -> dict[str, Any]:
    """Each step after the UNet pass, in order, through `measure(step_name, fn) -> fn()`."""
    from difaug.diffusion import diffseg

    grid = (SIDE, SIDE)
    attention = measure("aggregate", lambda: diffseg.aggregate(maps, grid))[0]
    proposals = measure(
        "first merge", lambda: diffseg.anchor_proposals(attention, grid, diffseg.KL_THRESHOLDS[0])
    )
    sizes = [len(proposals)]
    for threshold in diffseg.KL_THRESHOLDS[1:]:
        proposals = measure("later merges", lambda p=proposals, t=threshold: diffseg.regroup(p, t))
        sizes.append(len(proposals))
    labels = measure("suppress", lambda: diffseg.suppress(proposals, grid, SCALE))
    score = measure("drift score", lambda: diffseg.drift_score(labels, mask, 1))
    return {"proposals": sizes, "segments": score.segments, "labels": labels}


def per_group_means_agree(seed: int) -> tuple[float, bool]:
    """The later merges as `regroup` does them (one 0/1 matmul) against the per-group `.mean(0)`
    of the same groups (the previous way): max |Δ| relative to the largest value, and whether
    the label maps are identical."""
    import torch

    from difaug.diffusion import diffseg

    grid = (SIDE, SIDE)
    attention = diffseg.aggregate(synthetic_maps(seed), grid)[0]
    fast = slow = diffseg.anchor_proposals(attention, grid, diffseg.KL_THRESHOLDS[0])
    for threshold in diffseg.KL_THRESHOLDS[1:]:
        fast = diffseg.regroup(fast, threshold)
        log_p = slow.clamp_min(torch.finfo(slow.dtype).tiny).log()
        close = (diffseg._sym_kl(slow, slow, log_p, log_p) < threshold).numpy()
        slow = torch.stack([slow[torch.as_tensor(g)].mean(0) for g in diffseg.greedy_groups(close)])
    if fast.shape != slow.shape:
        return float("inf"), False
    rel = float((fast - slow).abs().max() / slow.abs().max())
    same = (diffseg.suppress(fast, grid, SCALE) == diffseg.suppress(slow, grid, SCALE)).all()
    return rel, bool(same)


def capture_ms(threads: int, repeats: int) -> float:
    """Milliseconds of one SD1.5 64×64-token self-attention layer (8 heads, 320 channels) through
    the capture processor, one image (SD1.5 has five such layers, and ten smaller ones)."""
    import torch
    from diffusers.models.attention_processor import Attention

    from difaug.diffusion import attention_capture

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    attn = Attention(320, heads=8, dim_head=40).eval()
    x = torch.randn(1, SIDE * SIDE, 320)
    sink = attention_capture.AttentionSink((SIDE, SIDE))
    with torch.no_grad():
        attention_capture.CaptureSelfAttention(sink)(attn, x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            attention_capture.CaptureSelfAttention(sink)(attn, x)
    return (time.perf_counter() - t0) * 1000 / repeats


def timed(n_images: int, threads: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Milliseconds per image by step (mean over `n_images`) at `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    ms: Counter[str] = Counter()

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        ms[name] += (time.perf_counter() - t0) * 1000 / n_images
        return out

    run_steps(synthetic_maps(100), support_mask(100), lambda name, fn: fn())  # warm-up
    runs = [run_steps(synthetic_maps(i), support_mask(i), measure) for i in range(n_images)]
    return dict(ms), runs


def counted(seed: int) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        out, ops, crossings = count_ops(fn)
        before = counts.get(name, (0, 0))
        counts[name] = (before[0] + ops, before[1] + crossings)
        return out

    run_steps(synthetic_maps(seed), support_mask(seed), measure)
    return counts


def scorer(device: str, tiny: bool) -> Any:
    """DiffSeg on SD1.5's UNet and VAE with random fp16 weights built on `device` (no download;
    the empty prompt's embedding is random too), or on the tiny model (float32, for a CPU run)."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from difaug.diffusion import diffseg

    if tiny:
        from difaug.core.config import JobConfig, RuntimeConfig
        from difaug.testing.tiny import make_tiny

        bundle = make_tiny(Path(tempfile.mkdtemp()))
        return diffseg.load(JobConfig(model=str(bundle)), RuntimeConfig(device=device, dtype="float32"))
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_throughput import SD15_UNET, build_models

    models = build_models(device, torch.float16)
    width = SD15_UNET["cross_attention_dim"]
    context = torch.randn(1, 77, width, device=device, dtype=torch.float16)
    pipe = SimpleNamespace(
        unet=models["unet"],
        vae=models["vae"],
        vae_scale_factor=8,
        difaug_device=torch.device(device),
        encode_prompt=lambda *a, **k: (context, None),
    )
    return diffseg.DiffSeg(pipe)


def device_stages(device: str, tiny: bool, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Milliseconds per image of each stage of `DiffSeg.drift_scores` on `device` (synchronised after
    each), and of the whole call unsynchronised, for `batch` random images at `size`²."""
    import torch

    from difaug.diffusion import attention_capture, diffseg

    seg = scorer(device, tiny)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    masks = [support_mask(i)[:size, :size] for i in range(batch)]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    ms: Counter[str] = Counter()

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        ms[name] += (time.perf_counter() - t0) * 1000 / (batch * repeats)
        return out

    def steps() -> None:
        stage("images → latents", lambda: seg.latents(images))
        maps, latent_hw = stage("latents + UNet pass", lambda: seg.attention(images))
        grid = attention_capture.AttentionSink(latent_hw).grid(max(maps))
        scale = size // grid[0]
        attention = stage("aggregate", lambda: diffseg.aggregate(maps, grid))
        proposals = stage("merge (batched)", lambda: diffseg.merge_batch(attention, grid))
        labels = stage("suppress (batched)", lambda: diffseg.suppress_batch(proposals, grid, scale))
        stage(
            "drift score", lambda: [diffseg.drift_score(x, m, 1) for x, m in zip(labels, masks, strict=True)]
        )
        stage("drift_scores() whole", lambda: seg.drift_scores(list(images), masks, [1] * batch))

    def per_image() -> None:
        for img, m in zip(images, masks, strict=True):
            seg.drift_scores([img], [m], [1])

    seg.drift_scores(list(images), masks, [1] * batch)  # warm-up
    per_image()
    for _ in range(repeats):
        steps()
        stage("drift_scores() per image", per_image)
    ms["UNet pass"] = ms.pop("latents + UNet pass") - ms["images → latents"]
    together = seg.drift_scores(list(images), masks, [1] * batch)
    alone = [seg.drift_scores([img], [m], [1])[0] for img, m in zip(images, masks, strict=True)]
    deltas = [abs(a.iou - b.iou) for a, b in zip(together, alone, strict=True) if a.iou is not None]
    print(f"batched vs one by one: max |Δ drift_iou| {max(deltas, default=0.0):.4f}")
    half_probabilities(seg, images, masks, batch, repeats, stage)
    return dict(ms)


def half_probabilities(
    seg: Any, images: np.ndarray, masks: list, batch: int, repeats: int, stage: Callable
) -> None:
    """The opt-in float16 attention probabilities (float32 sums) against the default float32 ones:
    their time, the share of label pixels that change and the max |Δ drift_iou|."""
    from difaug.diffusion import diffseg

    half = diffseg.DiffSeg(seg.pipe, half_probabilities=True)
    half.drift_scores(list(images), masks, [1] * batch)  # warm-up
    for _ in range(repeats):
        stage("drift_scores() half probs", lambda: half.drift_scores(list(images), masks, [1] * batch))
    full_labels, half_labels = seg.segment(images), half.segment(images)
    changed = float(np.mean([np.mean(a != b) for a, b in zip(full_labels, half_labels, strict=True)]))
    full_s = [diffseg.drift_score(x, m, 1).iou for x, m in zip(full_labels, masks, strict=True)]
    half_s = [diffseg.drift_score(x, m, 1).iou for x, m in zip(half_labels, masks, strict=True)]
    delta = max((abs(a - b) for a, b in zip(full_s, half_s, strict=True) if a is not None), default=0.0)
    print(
        f"half probabilities vs float32: {changed:.2%} of label pixels changed, max |Δ drift_iou| {delta:.4f}"
    )


def compiled_vs_eager(device: str, tiny: bool, batch: int, size: int, repeats: int, backend: str) -> None:
    """The scoring pass compiled (`CompiledPass`, what a compiled generator's job uses) against
    the eager one: the compile's warm-up, ms per image of the whole `drift_scores` call, and the
    max |Δ| of the attention maps and of drift_iou on the same images."""
    import torch

    from difaug.diffusion import attention_capture, diffseg

    seg = scorer(device, tiny)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    masks = [support_mask(i)[:size, :size] for i in range(batch)]
    fast = diffseg.DiffSeg(
        seg.pipe, compiled=attention_capture.CompiledPass(seg.pipe, batch_size=batch, backend=backend)
    )

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def per_image_ms(scorer_: Any) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            scorer_.drift_scores(list(images), masks, [1] * batch)
        sync()
        return (time.perf_counter() - t0) * 1000 / (batch * repeats)

    t0 = time.perf_counter()
    fast.drift_scores(list(images), masks, [1] * batch)
    sync()
    warm = time.perf_counter() - t0
    seg.drift_scores(list(images), masks, [1] * batch)
    eager_ms, fast_ms = per_image_ms(seg), per_image_ms(fast)
    want, got = seg.attention(images)[0], fast.attention(images)[0]
    maps_delta = max(float((want[k].float() - got[k].float()).abs().max()) for k in want)
    ious = [
        abs(a.iou - b.iou)
        for a, b in zip(
            seg.drift_scores(list(images), masks, [1] * batch),
            fast.drift_scores(list(images), masks, [1] * batch),
            strict=True,
        )
        if a.iou is not None
    ]
    changed = float(
        np.mean([np.mean(a != b) for a, b in zip(seg.segment(images), fast.segment(images), strict=True)])
    )
    print(f"compiled scoring pass ({backend}): warm-up {warm:.1f} s, usable {fast.compiled.usable}")
    print(f"  ms per image: eager {eager_ms:.2f}, compiled {fast_ms:.2f}")
    print(
        f"  max |Δ| attention maps {maps_delta:.2e}, {changed:.2%} of label pixels changed, "
        f"max |Δ drift_iou| {max(ious, default=0.0):.4f}"
    )
    print(f"diffseg_compiled_vs_eager: {eager_ms / fast_ms:.2f}  (eager ms ÷ compiled ms, batch {batch})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one image per thread count")
    ap.add_argument("--images", type=int, default=0, help="images per thread count (quick: 1, else 3)")
    ap.add_argument(
        "--device", default="", help="time DiffSeg.drift_scores's stages on this device (e.g. cuda)"
    )
    ap.add_argument("--tiny", action="store_true", help="with --device: the tiny model (a CPU check)")
    ap.add_argument("--batch", type=int, default=16, help="with --device: images per score call")
    ap.add_argument("--size", type=int, default=0, help="with --device: image side (512; tiny: 64)")
    ap.add_argument(
        "--compiled",
        default="",
        metavar="BACKEND",
        help="with --device: only the compiled scoring pass vs the eager one (inductor; aot_eager on a CPU)",
    )
    args = ap.parse_args()
    n_images = args.images or (1 if args.quick else 3)
    if args.device and args.compiled:
        size = args.size or (64 if args.tiny else 512)
        compiled_vs_eager(args.device, args.tiny, args.batch, size, n_images, args.compiled)
        return
    if args.device:
        size = args.size or (64 if args.tiny else 512)
        ms = device_stages(args.device, args.tiny, args.batch, size, n_images)
        print(f"DiffSeg.drift_scores on {args.device}, batch {args.batch}, {size}², ms per image:")
        for name, value in ms.items():
            print(f"  {name:<18} {value:8.2f}")
        ratio = ms["drift_scores() per image"] / ms["drift_scores() whole"]
        print(f"diffseg_batched_vs_per_image: {ratio:.2f}  (per-image ms ÷ batched ms, batch {args.batch})")
        half = ms["drift_scores() whole"] / ms["drift_scores() half probs"]
        print(f"diffseg_half_probabilities_speedup: {half:.2f}  (float32 ms ÷ float16-probabilities ms)")
        print(f"diffseg_score_ms_per_image: {ms['drift_scores() whole']:.2f}")
        return

    print(f"synthetic attention at {SIDE}×{SIDE} tokens (aggregated map 4096×4096), labels at 512²")
    results = {threads: timed(n_images, threads) for threads in (1, 2)}
    runs = results[1][1]
    for i, run in enumerate(runs):
        print(f"  image {i}: proposals per merge {run['proposals']}, segments {run['segments']}")
    counts = counted(0)
    print(f"{'step':<14} {'ms/img 1 thr':>12} {'ms/img 2 thr':>12} {'tensor ops':>10} {'host syncs':>10}")
    for name in counts:
        ops, syncs = counts[name]
        print(f"{name:<14} {results[1][0][name]:12.1f} {results[2][0][name]:12.1f} {ops:10d} {syncs:10d}")
    capture = {threads: capture_ms(threads, n_images) for threads in (1, 2)}
    print(
        f"{'capture 1 layer':<14} {capture[1]:12.1f} {capture[2]:12.1f}   (not in 'all'; SD1.5 runs 5 at 64²)"
    )
    total = {t: sum(r[0].values()) for t, r in results.items()}
    all_ops = sum(c[0] for c in counts.values())
    all_syncs = sum(c[1] for c in counts.values())
    print(f"{'all':<14} {total[1]:12.1f} {total[2]:12.1f} {all_ops:10d} {all_syncs:10d}")
    for seed in range(n_images):
        rel, same = per_group_means_agree(seed)
        print(
            f"image {seed}: later merges by matmul vs per-group mean: max |Δ|/max {rel:.1e}, labels identical: {same}"
        )
    print(f"diffseg_post_pass_ms_per_image: {total[1]:.1f}")


if __name__ == "__main__":
    main()
