"""End to end on one GPU, one command: plain diffusers vs difaug's generator vs the whole job.

On random full-size weights built on the device (SD1.5 UNet, `sd-controlnet-hed` ControlNet, SD
VAE, CLIP-L text tower from their known config dicts, random init, saved once as a difaug model
bundle; no download), with the same supports, prompts and settings (512², UniPC 20 steps,
guidance 9 with CFG, fp16, HED condition, X aux images per support):

1. **plain diffusers** — what a user writes in ten lines: one `StableDiffusionControlNetPipeline`
   call per support with `num_images_per_prompt=X`, fp16, UniPC (conditions precomputed);
2. **difaug generator** — `AuxGenerator` alone on the same supports (conditions precomputed),
   with the default fast path (compile on for CUDA, warm-up timed separately);
3. **difaug job** — the whole `difaug generate` on a local Dask cluster (1 worker): read, HED,
   generate, encode, Parquet; images/s after model load and warm-up, and over the shards' span.

Then the compiled default's mean / max |Δ| against eager on the same seeds (the fast path's
tolerance), and per opt-in option (eager, on up to 8 supports): images/s of the generator and the
mean / max |Δ| of its float images in [0, 1] against the eager default on the same seeds
(cache_interval 2 and 3, 60 % of the UniPC steps, LCM 4 steps without CFG — its Δ needs real
LCM-LoRA weights, so it is printed as n/a).
On CUDA it also counts host synchronisations inside one generator call
(`torch.cuda.set_sync_debug_mode`).

    python benchmarks/gpu_e2e.py                  # GPU: the figures of issue 14
    python benchmarks/gpu_e2e.py --tiny           # CPU: tiny model at 64², a minute (make bench)

Without a GPU it runs `--tiny` by itself. Last lines: `speedup_vs_diffusers: N` (generator ÷
plain diffusers), `job_vs_generator: N` (job after warm-up ÷ generator), `mfu: N` (generator; n/a
on the CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_throughput import SD15_TEXT, build_models, count_flops, flops_per_image, peak_tflops  # noqa: E402


def write_bundle(folder: Path, tiny: bool, device: str) -> Path:
    """A difaug model bundle: the tiny one, or the real architectures with random fp16 weights
    (the tiny bundle's tokenizer, scheduler and random HED, which has the real architecture)."""
    import torch
    from transformers import CLIPTokenizer

    from difaug.models import BASE_DIRNAME
    from difaug.tiny import make_tiny

    make_tiny(folder)
    if tiny:
        return folder
    base = folder / BASE_DIRNAME
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    parts = build_models(device, torch.float16, vocab_size=len(tok))
    for name in ("unet", "vae", "text_encoder"):
        shutil.rmtree(base / name)
        parts[name].save_pretrained(base / name, safe_serialization=True)
    for cond in ("hed", "seg", "scribble"):
        shutil.rmtree(folder / f"sd-controlnet-{cond}")
    parts["controlnet"].save_pretrained(folder / "sd-controlnet-hed", safe_serialization=True)
    index = json.loads((folder / "difaug-models.json").read_text())
    index["controlnets"] = {"hed": "sd-controlnet-hed"}
    index["note"] = (
        f"SD1.5 architectures with random fp16 weights (text tower {SD15_TEXT['hidden_size']} wide)"
    )
    (folder / "difaug-models.json").write_text(json.dumps(index, indent=2))
    del parts
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def supports(n: int, size: int, cfg: Any) -> tuple[list[Any], list[np.ndarray]]:
    """`n` samples with distinct class names and random HED-like conditions at `size`²."""
    from difaug.manifest import Sample

    names = ("cat", "dog", "person", "bus", "bird", "boat", "chair", "horse")
    rng = np.random.default_rng(0)
    samples = [
        Sample(row=i + 1, sample_id=f"s{i}", image="", mask="", class_id=1, class_name=names[i % len(names)])
        for i in range(n)
    ]
    conds = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return samples, conds


def plain_diffusers(bundle: Path, cfg: Any, samples: list, conds: list, device: str) -> tuple[float, float]:
    """(warm-up s, images/s): one pipeline call per support, `num_images_per_prompt=X`."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from PIL import Image

    from difaug.generate import sample_prompt
    from difaug.models import BASE_DIRNAME

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    controlnet = ControlNetModel.from_pretrained(bundle / "sd-controlnet-hed", torch_dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        bundle / BASE_DIRNAME, controlnet=controlnet, safety_checker=None, torch_dtype=dtype
    ).to(device)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def call(i: int) -> None:
        pipe(
            sample_prompt(samples[i], cfg),
            negative_prompt=cfg.negative_prompt,
            image=Image.fromarray(conds[i]),
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            num_images_per_prompt=cfg.num_aux,
            generator=torch.Generator(device).manual_seed(i),
        )

    t0 = time.perf_counter()
    call(0)
    _sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(len(samples)):
        call(i)
    _sync()
    return warm, len(samples) * cfg.num_aux / (time.perf_counter() - t0)


def make_generator(cfg: Any, rt: Any) -> Any:
    from difaug.generate import AuxGenerator

    return AuxGenerator.from_config(cfg, rt)


def time_generator(gen: Any, samples: list, conds: list) -> tuple[float, float, np.ndarray]:
    """(warm-up s, images/s, float images of the first batch): prompts encoded, one warm-up batch
    per shape, then every item; the images come from a separate call on the first batch."""
    from difaug.generate import make_work_items

    items = [
        it
        for s, c in zip(samples, conds, strict=True)
        for it in make_work_items(s, c, (c.shape[1], c.shape[0]), gen.cfg)
    ]
    for prompt in {it.prompt for it in items} | {items[0].negative_prompt}:
        gen.encode(prompt)
    t0 = time.perf_counter()
    warm_up = gen.generate(items[: gen.batch_size])
    _sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.generate(items)
    _sync()
    rate = len(items) / (time.perf_counter() - t0)
    first = gen.sample(items[: gen.batch_size])
    # Run-to-run determinism in one process: the warm-up call and this one, same seeds.
    from difaug.generate import to_uint8

    same = all(np.array_equal(r.image, img) for r, img in zip(warm_up, to_uint8(first), strict=False))
    print(f"  same bytes on a second call (same process): {'yes' if same else 'NO'}")
    return warm, rate, first


def count_host_syncs(gen: Any, samples: list, conds: list) -> int:
    """Synchronising CUDA calls inside one generator batch (after warm-up), as torch reports them."""
    import torch

    from difaug.generate import make_work_items

    items = [
        it
        for s, c in zip(samples, conds, strict=True)
        for it in make_work_items(s, c, (c.shape[1], c.shape[0]), gen.cfg)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gen.sample(items[: gen.batch_size])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run_job(
    bundle: Path, cfg: Any, rt: Any, n: int, size: int, work: Path, rerun_check: bool = False
) -> dict[str, float]:
    """The whole `difaug generate` on a local cluster; rates from the shards' own stats."""
    from difaug import shards
    from difaug.config import Job
    from difaug.runner import run
    from difaug.testing import make_bench_set

    manifest = make_bench_set(work / "data", n, size)
    out = work / "job"
    job_cfg = replace(cfg, shard_size=max(1, n // 2), detect_resolution=size)
    job = Job(manifest=str(manifest), out=str(out), config=job_cfg.validate(), runtime=rt)
    t0 = time.perf_counter()
    summary = run(job)
    wall = time.perf_counter() - t0
    if not summary.ok:
        raise SystemExit(f"the job failed: {summary.failures[:3]}")
    stats = shards.load_stats(out)
    start = min(datetime.fromisoformat(s["started"]) for s in stats)
    end = max(datetime.fromisoformat(s["finished"]) for s in stats)
    span = (end - start).total_seconds()
    load = sum(s["load_seconds"] or 0.0 for s in stats)
    warm = sum(s["seconds"].get("warmup", 0.0) for s in stats)
    images = summary.images
    result = {
        "images": images,
        "wall": wall,
        "span": span,
        "load": load,
        "warmup": warm,
        "rate_after_warmup": images / max(span - load - warm, 1e-9),
        "rate_span": images / span,
        "rate_wall": images / wall,
        "warnings": sum(len(s.get("compile_warnings", [])) for s in stats),
    }
    if rerun_check:
        # A fresh worker process regenerates a deleted shard (compile cache warm): same bytes?
        before = shards.shard_path(out, 0).read_bytes()
        shards.stats_path(out, 0).unlink()
        shards.shard_path(out, 0).unlink()
        run(job)
        same = shards.shard_path(out, 0).read_bytes() == before
        print(
            f"  deleted shard regenerated by a new worker: {'byte-identical' if same else 'DIFFERENT bytes'}"
        )
    return result


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.mean()), float(d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="the tiny model on the CPU at --size 64 (automatic without a GPU)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="what `make bench` runs (implies --tiny without a GPU)"
    )
    ap.add_argument("--supports", type=int, default=0, help="supports (default 32 on a GPU, 4 tiny)")
    ap.add_argument("--num-aux", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=0, help="default 16 on a GPU, 4 tiny")
    ap.add_argument("--size", type=int, default=0, help="default 512 on a GPU, 64 tiny")
    ap.add_argument("--steps", type=int, default=0, help="default 20 on a GPU, 6 tiny")
    ap.add_argument("--compile", choices=("on", "off"), default="", help="default: on for CUDA, off tiny")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--no-options", action="store_true", help="skip the opt-in options table")
    ap.add_argument("--no-job", action="store_true", help="skip the whole-job measurement")
    ap.add_argument(
        "--rerun-check", action="store_true", help="delete shard 0, rerun the job, compare its bytes"
    )
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--work", default="", help="keep the bundle and the job here (default: a temp folder)")
    args = ap.parse_args()

    import torch

    from difaug.config import JobConfig, RuntimeConfig

    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    device = "cpu" if tiny else "cuda"
    n = args.supports or (4 if tiny else 32)
    size = args.size or (64 if tiny else 512)
    steps = args.steps or (6 if tiny else 20)
    batch = args.batch_size or (4 if tiny else 16)
    compile_on = (args.compile or ("off" if tiny else "on")) == "on"
    if tiny:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    import diffusers

    print(
        f"{datetime.now():%Y-%m-%d %H:%M} device {name}, torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{'tiny model' if tiny else 'SD1.5 architectures, random fp16 weights'}, {size}², {steps} steps, "
        f"{n} supports × {args.num_aux}, batch {batch}, compile {'on (' + args.compile_mode + ')' if compile_on else 'off'}"
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="difaug-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        bundle = write_bundle(work / "models", tiny, device)
        print(f"model bundle written in {time.perf_counter() - t0:.1f} s")
        cfg = JobConfig(
            model=str(bundle),
            condition="hed",
            steps=steps,
            guidance_scale=9.0,
            num_aux=args.num_aux,
            resolution=size,
        ).validate()
        cache = str(work / "compile-cache")
        rt = RuntimeConfig(
            device=device,
            batch_size=batch,
            compile="on" if compile_on else "off",
            compile_mode=args.compile_mode,
            compile_cache_dir=cache,
            cluster="local",
            workers=1,
            progress=False,
        )
        samples, conds = supports(n, size, cfg)
        per_image = None if tiny else flops_per_image(count_flops(size), steps, cfg=True)
        peak = 0.0 if tiny else peak_tflops(name, args.peak_tflops)

        def mfu(rate: float) -> str:
            return f"{100 * per_image * rate / (peak * 1e12):.1f}%" if per_image and peak else "n/a"

        print(f"{'what':<34}{'warm-up s':>10}{'images/s':>10}{'MFU':>8}")
        warm, base_rate = plain_diffusers(bundle, cfg, samples, conds, device)
        print(f"{'plain diffusers (1 call/support)':<34}{warm:>10.1f}{base_rate:>10.2f}{mfu(base_rate):>8}")
        if cuda and not tiny:
            torch.cuda.empty_cache()
        gen = make_generator(cfg, rt)
        warm, gen_rate, gen_first = time_generator(gen, samples, conds)
        print(f"{'difaug generator':<34}{warm:>10.1f}{gen_rate:>10.2f}{mfu(gen_rate):>8}")
        if gen.warnings:
            print(f"  generator warnings: {gen.warnings}")
        if device == "cuda":
            print(f"  host synchronisations in one generator call: {count_host_syncs(gen, samples, conds)}")
        del gen
        if cuda:
            torch.cuda.empty_cache()
        job = None
        if not args.no_job:
            job = run_job(bundle, cfg, rt, n, size, work, args.rerun_check)
            print(
                f"{'difaug job (local cluster, 1 worker)':<34}{job['warmup']:>10.1f}{job['rate_after_warmup']:>10.2f}"
                f"{mfu(job['rate_after_warmup']):>8}"
            )
            print(
                f"  job: {job['images']} images, model load {job['load']:.1f} s, warm-up {job['warmup']:.1f} s, "
                f"{job['rate_span']:.2f} images/s over the shards, {job['rate_wall']:.2f} over the wall, "
                f"{job['warnings']} compile warnings"
            )
        if not args.no_options:
            # At most 8 supports each (32 images, 2 batches of 16): the table costs minutes on a GPU.
            # Options run eager (cache_interval does not combine with compile, and LCM's batch
            # without CFG would be a new compiled shape); compared with the eager default.
            k = min(n, 8)
            eager_rt = replace(rt, compile="off")
            _, ref_rate, ref_images = time_generator(make_generator(cfg, eager_rt), samples[:k], conds[:k])
            if compile_on:
                m, w = diff(gen_first, ref_images)
                print(
                    f"compiled default vs eager, same seeds: mean |Δ| {m:.5f}, max |Δ| {w:.5f} (float images)"
                )
            options_table(cfg, eager_rt, samples[:k], conds[:k], ref_images, ref_rate, device)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"speedup_vs_diffusers: {gen_rate / base_rate:.2f}")
    print(f"job_vs_generator: {job['rate_after_warmup'] / gen_rate:.2f}" if job else "job_vs_generator: n/a")
    print(f"mfu: {mfu(gen_rate)}")


def options_table(
    cfg: Any, rt: Any, samples: list, conds: list, reference: np.ndarray, default_rate: float, device: str
) -> None:
    """Each opt-in option: images/s and mean / max |Δ| of the first batch's float images vs the default."""
    import torch

    rows: list[tuple[str, Any, Any]] = [
        ("cache_interval 2", replace(cfg, cache_interval=2), rt),
        ("cache_interval 3", replace(cfg, cache_interval=3), rt),
        (f"UniPC {max(1, cfg.steps * 3 // 5)} steps", replace(cfg, steps=max(1, cfg.steps * 3 // 5)), rt),
        ("LCM scheduler 4 steps, no CFG", replace(cfg, scheduler="lcm", steps=4, guidance_scale=1.0), rt),
    ]
    print(f"{'option (eager)':<34}{'images/s':>10}{'× default':>10}{'mean |Δ|':>10}{'max |Δ|':>10}")
    print(f"{'default, eager':<34}{default_rate:>10.2f}{1.0:>10.2f}{0.0:>10.4f}{0.0:>10.4f}")
    for label, cfg_i, rt_i in rows:
        gen = make_generator(cfg_i, rt_i)
        _, rate, images = time_generator(gen, samples, conds)
        if "LCM" in label:
            mean, worst = "n/a", "n/a"  # without LCM-LoRA weights the LCM images mean nothing
        else:
            m, w = diff(images, reference)
            mean, worst = f"{m:.4f}", f"{w:.4f}"
        print(f"{label:<34}{rate:>10.2f}{rate / default_rate:>10.2f}{mean:>10}{worst:>10}")
        del gen
        if device == "cuda":
            torch.cuda.empty_cache()
    print("FP8 matmuls: not implemented (to be measured on Hopper)")


if __name__ == "__main__":
    main()
