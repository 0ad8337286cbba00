"""GPU throughput of the real SD1.5 + ControlNet architecture: images/s and MFU.

What it measures
- FLOPs per auxiliary image, counted with `torch.utils.flop_counter.FlopCounterMode` on the real
  architectures (SD1.5 UNet, ControlNet 1.0 `sd-controlnet-*`, SD VAE decoder) built on the meta
  device from their hub config dicts: no weights, no downloads, a second on any machine.
  Counted: convolutions and matmuls (attention included), i.e. the work MFU is defined on;
  the text encoder is excluded (prompt embeddings are cached, ~20 GFLOP per distinct prompt).
- On a CUDA GPU: images/s of `AuxGenerator.generate` at 512², 20 steps, guidance 9 (CFG doubles
  the UNet/ControlNet batch), batch 1 / 8 / 16, fp16, with and without `torch.compile`, and the
  LCM setting (4 steps, guidance 1 → no CFG). MFU = counted FLOPs × images/s ÷ the GPU's dense
  fp16 tensor-core peak (table below, or `--peak-tflops`).
  The pipeline is difaug's default CUDA path (fused QKV, batched VAE decode, contiguous) and
  has the real architecture with random weights (timings do not depend on the
  values; a fused LCM-LoRA does not change the UNet's shape), or real weights with `--model`.

Run (GPU):  .venv/bin/python benchmarks/gpu_throughput.py [--batches 1 8 16] [--images 32]
            [--no-compile] [--compile-mode max-autotune] [--model models/sd15-bundle]
            [--channels-last]   (does channels_last win with compile? the default is contiguous)
On a CPU it prints the FLOP counts and says that timings need a GPU (`--force-cpu` times a tiny
`--size` on the CPU, only to exercise the code path). The candidates for a faster step (CUDA
graphs, max-autotune, channels_last with compile, inductor options, FP8, LCM compiled) are timed
against this default, in one process, by `step_candidates.py` (its pipelines come from here).
Last line: `gpu_tflop_per_image: N` (20 steps with CFG at 512²).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# lllyasviel/sd-controlnet-{hed,seg,scribble}/config.json: the UNet's encoder + these.
SD_CONTROLNET_EXTRA: dict[str, Any] = {"conditioning_embedding_out_channels": (16, 32, 96, 256)}
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# openai/clip-vit-large-patch14 text tower, as in SD1.5's text_encoder/config.json.
SD15_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "vocab_size": 49408,
}
# Dense fp16 tensor-core peak (TFLOP/s, fp32 accumulate), matched on the device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def build_models(device: str, dtype: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """UNet, ControlNet, VAE (and CLIP text encoder) of SD1.5 with random weights on `device`."""
    import torch

    # Built directly in `dtype` (not cast afterwards with .to(), which diffusers warns about).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        models = _build(device, vocab_size)
    finally:
        torch.set_default_dtype(previous)
    return {k: m.eval() for k, m in models.items()}


def _build(device: str, vocab_size: int | None) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        controlnet = ControlNetModel.from_unet(unet, **SD_CONTROLNET_EXTRA)
        vae = AutoencoderKL(**SD15_VAE)
        models = {"unet": unet, "controlnet": controlnet, "vae": vae}
        if vocab_size is not None:
            from transformers import CLIPTextConfig, CLIPTextModel

            text = dict(SD15_TEXT, vocab_size=max(vocab_size, 1))
            models["text_encoder"] = CLIPTextModel(
                CLIPTextConfig(**text, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
            )
    return models


def count_flops(size: int = 512) -> dict[str, float]:
    """FLOPs of one ControlNet + UNet evaluation of one latent, and of one VAE decode, at `size`²."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m = build_models("meta", torch.float32)
    lat = size // 8
    x = torch.empty(1, 4, lat, lat, device="meta")
    text = torch.empty(1, 77, SD15_UNET["cross_attention_dim"], device="meta")
    cond = torch.empty(1, 3, size, size, device="meta")
    out: dict[str, float] = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            down, mid = m["controlnet"](
                x, 10, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False
            )
        out["controlnet"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            m["unet"](
                x,
                10,
                encoder_hidden_states=text,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )
        out["unet"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            m["vae"].decode(x)
        out["vae_decode"] = fc.get_total_flops()
    return out


def flops_per_image(f: dict[str, float], steps: int, cfg: bool) -> float:
    per_eval = f["controlnet"] + f["unet"]
    return steps * per_eval * (2 if cfg else 1) + f["vae_decode"]


def peak_tflops(name: str, override: float) -> float:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return 0.0


def random_pipeline_parts(device: str) -> dict[str, Any]:
    """The real architecture with random weights (built once, shared by all settings) and the
    tiny bundle's tokenizer: the text encoder runs outside the timed loop (embeddings cached)."""
    import tempfile
    from pathlib import Path

    import torch
    from transformers import CLIPTokenizer

    from difaug.testing.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(make_tiny(Path(tmp)) / "stable-diffusion-v1-5" / "tokenizer")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return {"tokenizer": tok, **build_models(device, dtype, vocab_size=len(tok))}


def generator_config(steps: int, lcm_steps: int, lcm: bool, model: str = "") -> Any:
    """The generator's `JobConfig`: UniPC `steps` with CFG (guidance 9), or the LCM setting
    (`lcm_steps` with guidance 1, so no CFG: a fused LCM-LoRA leaves the UNet's shape as it is)."""
    from difaug.core.config import JobConfig

    steps, guidance = (lcm_steps, 1.0) if lcm else (steps, 9.0)
    return JobConfig(model=model, steps=steps, guidance_scale=guidance, scheduler="lcm" if lcm else "unipc")


def assemble_pipeline(parts: dict[str, Any]) -> Any:
    """A `StableDiffusionControlNetPipeline` of `parts` (tokenizer, text encoder, UNet, ControlNet,
    VAE) with SD1.5's own scheduler config, before `prepare_pipeline`."""
    from diffusers import PNDMScheduler, StableDiffusionControlNetPipeline

    from difaug.testing.tiny import SD15_SCHEDULER

    return StableDiffusionControlNetPipeline(
        **parts,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_generator(
    args: argparse.Namespace, parts: dict[str, Any] | None, device: str, compile: bool, lcm: bool
) -> Any:
    from difaug.core.config import RuntimeConfig
    from difaug.diffusion.loading import prepare_pipeline
    from difaug.diffusion.sampler import AuxGenerator

    cfg = generator_config(args.steps, args.lcm_steps, lcm, args.model)
    if parts is None:
        return AuxGenerator.from_config(cfg, RuntimeConfig(device=device, compile=compile))
    pipe = prepare_pipeline(
        assemble_pipeline(parts),
        device=device,
        scheduler=cfg.scheduler,
        compile=compile,
        compile_mode=args.compile_mode,
        channels_last=args.channels_last,
    )
    dtype = "float16" if device.startswith("cuda") else "float32"
    return AuxGenerator(pipe, cfg, device=device, dtype=dtype, pad_batches=compile)


def time_setting(gen: Any, n_images: int, size: int) -> tuple[float, float]:
    """(seconds for the warm-up batch, images/s over `n_images` after it)."""
    import torch

    from difaug.core.config import JobConfig
    from difaug.diffusion.sampler import make_work_items
    from difaug.inputs.manifest import Sample

    rng = np.random.default_rng(0)
    cfg = JobConfig(num_aux=1)
    items = []
    for i in range(n_images):
        s = Sample(row=i + 1, sample_id=f"s{i}", image="", mask="", class_id=1, class_name=f"class {i % 5}")
        items += make_work_items(s, rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (size, size), cfg)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t0 = time.perf_counter()
    for prompt in {it.prompt for it in items} | {items[0].negative_prompt}:
        gen.encode(prompt)  # a worker encodes each class prompt once; not part of the timing
    gen.generate(items[: gen.batch_size])  # warm-up: compilation, kernel selection
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.generate(items)
    sync()
    return warm, n_images / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--images", type=int, default=32, help="timed images per setting")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lcm-steps", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    ap.add_argument("--no-lcm", action="store_true", help="skip the LCM settings")
    ap.add_argument(
        "--no-eager", action="store_true", help="skip the eager settings (on a GPU; measured 2026-12-01)"
    )
    ap.add_argument(
        "--channels-last", action="store_true", help="channels_last instead of the contiguous default"
    )
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--model", default="", help="real weights (bundle or base folder/id) instead of random")
    ap.add_argument(
        "--peak-tflops", type=float, default=0.0, help="the GPU's dense fp16 peak, if not in the table"
    )
    ap.add_argument("--force-cpu", action="store_true", help="time on the CPU anyway (use a small --size)")
    ap.add_argument("--quick", action="store_true", help="batches 1 and 8, 16 timed images per setting")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.images = [b for b in args.batches if b <= 8], min(args.images, 16)

    import torch

    t0 = time.perf_counter()
    f = count_flops(args.size)
    full = flops_per_image(f, args.steps, cfg=True)
    lcm = flops_per_image(f, args.lcm_steps, cfg=False)
    print(f"FLOPs counted on the meta device in {time.perf_counter() - t0:.1f} s, at {args.size}²:")
    print(f"  ControlNet, one latent        : {f['controlnet'] / 1e12:7.3f} TFLOP")
    print(f"  UNet, one latent              : {f['unet'] / 1e12:7.3f} TFLOP")
    print(f"  VAE decode, one image         : {f['vae_decode'] / 1e12:7.3f} TFLOP")
    print(f"  per image, {args.steps} steps with CFG  : {full / 1e12:7.2f} TFLOP")
    print(f"  per image, LCM {args.lcm_steps} steps, no CFG: {lcm / 1e12:7.2f} TFLOP")

    if torch.cuda.is_available():
        device = "cuda"
        name = torch.cuda.get_device_name(0)
    elif args.force_cpu:
        device, name = "cpu", "cpu"
    else:
        print("no CUDA GPU here: the timings (images/s, MFU) need one; run this file on a GPU machine")
        print(f"gpu_tflop_per_image: {full / 1e12:.2f}")
        return

    peak = peak_tflops(name, args.peak_tflops)
    print(f"device: {name}; fp16 peak {peak or 'unknown (pass --peak-tflops)'} TFLOP/s")
    print(f"{'setting':<24}{'batch':>6}{'warm-up s':>11}{'images/s':>10}{'MFU':>8}")
    prec = ("fp16" if device == "cuda" else "fp32") + ("+NHWC" if args.channels_last else "")
    compiled = not args.no_compile and device == "cuda"
    eager = not (args.no_eager and compiled)  # something is always timed
    settings = [(prec, False, False)] if eager else []
    if compiled:
        settings.append((f"{prec}+compile({args.compile_mode})", True, False))
    if not args.no_lcm:
        if eager:
            settings.append((f"{prec}+LCM", False, True))
        if compiled:
            settings.append((f"{prec}+LCM+compile({args.compile_mode})", True, True))
    parts = None if args.model else random_pipeline_parts(device)
    for label, compile, use_lcm in settings:
        gen = build_generator(args, parts, device, compile, use_lcm)
        for batch in args.batches:
            gen.batch_size = batch
            gen.pad_batches = compile
            warm, ips = time_setting(gen, args.images, args.size)
            work = lcm if use_lcm else full
            mfu = f"{100 * work * ips / (peak * 1e12):.1f}%" if peak else "n/a"
            print(f"{label:<24}{batch:>6}{warm:>11.1f}{ips:>10.2f}{mfu:>8}")
        del gen
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"gpu_tflop_per_image: {full / 1e12:.2f}")


if __name__ == "__main__":
    main()
