"""Candidates for a faster denoising step, each timed in one process against today's default.

Issue 21: the default CUDA path makes 94 % of its own ceiling, so the next gain must come from a
faster step. Every candidate below runs on the same pipeline parts (the real SD1.5 UNet,
`sd-controlnet-*` ControlNet and VAE architectures with random fp16 weights, built once on the
device), the same supports and seeds, at batch 16, 512², UniPC 20 steps, guidance 9 with CFG:

  eager            the eager default: the reference of every |Δ| (not a candidate)
  default          today's CUDA default (`prepare_pipeline(compile=True)`): UNet, ControlNet and
                   VAE decoder compiled in mode "default", contiguous, fused QKV, `vae_batch` 8
  lcm-2x           LCM 4 steps, guidance 1 (no CFG), compiled, batch 32: the UNet sees batch 32 as
                   the default does, so its compile cache is warm (the 40 images/s target)
  reduce-overhead  CUDA graphs around those three forwards; the scheduler stays outside the graph
  fp8              torchao float8 (dynamic activation + weight, per tensor) on every Linear of the
                   UNet and the ControlNet, then the default compile; Ada / Hopper and torchao only
  lcm              LCM as above at batch 16 (a new shape: a cold compile)
  channels-last    the default compile in channels_last
  freezing         inductor `freezing` (weights as constants)
  inductor-flags   diffusers' docs' flags: `coordinate_descent_tuning` (+ all directions),
                   `epilogue_fusion` off
  max-autotune-no-cudagraphs, max-autotune   (the longest compiles: last)

The order is the issue's ranking weighed by cost (a cold compile is ~90 s per shape on an H200):
`--budget S` skips a candidate whose estimated cost (`Candidate.est_s`, H200 seconds) no longer fits and cuts
one that runs past what is left (SIGALRM), so a run stopped short still prints every row it
measured. Inductor settings are patched around the candidate alone (`torch._inductor.config.patch`),
and `torch._dynamo.reset()` between candidates makes each compile its own.

Per row: warm-up s (the first batch: compilation, apart from the rate), step ms (a batch at S
steps minus one at S/2, over S/2: ControlNet + UNet + the scheduler's step), step MFU, images/s,
× default, MFU (counted FLOPs per image, as gpu_throughput.py), mean / max |Δ| of the float images
in [0, 1] against the eager default on the same seeds (LCM rows: against eager LCM), and whether a
second call gives the same bytes.

    python benchmarks/step_candidates.py --compile-cache /tmp/e2e/compile-cache --budget 250  # GPU
    python benchmarks/step_candidates.py --quick         # CPU: tiny model (make bench), ~30 s
    python benchmarks/step_candidates.py --backend inductor --candidates default freezing  # CPU, minutes

Without a GPU it runs the tiny model at 64² (6 steps, batch 4), the compiled rows with dynamo's
"eager" backend (graph capture and guards, no inductor: the code path in seconds, not a speed);
rows whose only change is inductor's (compile modes, inductor options) are skipped there with the
reason, unless `--backend inductor` (minutes per row on 2 cores). FP8 is skipped without torchao or
an FP8 GPU, with the reason. Last line: `step_candidates_best: NAME N× default`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_e2e import diff, supports  # noqa: E402
from gpu_throughput import (  # noqa: E402
    assemble_pipeline,
    count_flops,
    flops_per_image,
    generator_config,
    peak_tflops,
    random_pipeline_parts,
)

# The inductor flags diffusers' "Accelerate inference" page sets for maximum speed
# (https://huggingface.co/docs/diffusers/optimization/fp16, "torch.compile"), beside the
# `conv_1x1_as_mm` that difaug already sets (difaug.diffusion.speed.INDUCTOR_OPTIONS).
DOCS_INDUCTOR_FLAGS = {
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    est_s: float  # warm-up + timing on an H200 (cold compile ~90 s per shape), for --budget
    compiled: bool = True
    mode: str = "default"
    channels_last: bool = False
    inductor: dict[str, Any] = field(default_factory=dict)
    fp8: bool = False
    lcm: bool = False
    batch_factor: int = 1

    @property
    def inductor_only(self) -> bool:
        """Differs from the default only in what inductor does (nothing under dynamo's eager backend)."""
        return self.mode != "default" or bool(self.inductor)


CANDIDATES = (
    Candidate("default", "default (compiled, contiguous)", 110),
    Candidate("lcm-2x", "LCM 4 steps compiled", 40, lcm=True, batch_factor=2),
    Candidate("reduce-overhead", "reduce-overhead (CUDA graphs)", 120, mode="reduce-overhead"),
    Candidate("fp8", "FP8 linears (torchao) + compile", 130, fp8=True),
    Candidate("lcm", "LCM 4 steps compiled", 100, lcm=True),
    Candidate("channels-last", "channels_last + compile", 120, channels_last=True),
    Candidate("freezing", "inductor freezing", 120, inductor={"freezing": True}),
    Candidate("inductor-flags", "coordinate descent, no epilogue fusion", 200, inductor=DOCS_INDUCTOR_FLAGS),
    Candidate(
        "max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs", 420, mode="max-autotune-no-cudagraphs"
    ),
    Candidate("max-autotune", "max-autotune", 300, mode="max-autotune"),
)
EAGER = Candidate("eager", "eager default (reference)", 15, compiled=False)


class Cut(BaseException):
    """A candidate ran past its time: a BaseException, so that no `except Exception` on the way
    (the generator's eager fallback among them) turns it into an eager run."""


class Failed(Exception):
    pass


def tiny_parts() -> dict[str, Any]:
    """The tiny bundle's parts (`difaug.testing.tiny`), loaded as a job loads them."""
    from difaug.core.config import JobConfig
    from difaug.diffusion.loading import load_pipeline
    from difaug.diffusion.specs import ModelSpec
    from difaug.testing.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="difaug-steps-") as tmp:  # the weights end up in memory
        bundle = make_tiny(Path(tmp) / "models")
        spec = ModelSpec.from_config(JobConfig(model=str(bundle)))
        pipe = load_pipeline(spec, device="cpu", dtype="float32")
    return {k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "unet", "controlnet", "vae")}


def fp8_unavailable(device: str) -> str:
    """Why the FP8 candidate cannot run here ("" when it can)."""
    import torch

    if not device.startswith("cuda"):
        return "FP8 matmuls need an Ada or Hopper GPU; this is the CPU"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return f"FP8 matmuls need compute capability ≥ 8.9 (Ada, Hopper); this GPU is {major}.{minor}"
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig  # noqa: F401
    except Exception as exc:  # not installed, or built for another torch
        return f"torchao does not import ({type(exc).__name__}: {str(exc)[:120]})"
    return ""


def to_fp8(module: Any) -> None:
    """Every Linear of `module` to torchao float8: weights quantized once, activations per call
    (per-tensor scales: the row-wise kind needs bf16 weights, these are fp16)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    # set_inductor_config=False: torchao's own flags would be global and outlive this row.
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False))


def build(cand: Candidate, parts: dict[str, Any], args: argparse.Namespace, device: str, batch: int) -> Any:
    """The candidate's generator: today's `prepare_pipeline` path, the candidate's change, compile."""
    import torch

    from difaug.core.config import DEFAULT_VAE_BATCH
    from difaug.diffusion.loading import prepare_pipeline
    from difaug.diffusion.sampler import AuxGenerator
    from difaug.diffusion.speed import batched_vae_decode, compile_pipeline

    own = dict(parts)
    if cand.fp8:  # quantization is in place: on copies, so the other rows keep fp16 weights
        own["unet"], own["controlnet"] = copy.deepcopy(parts["unet"]), copy.deepcopy(parts["controlnet"])
    for name in ("unet", "controlnet", "vae"):  # an earlier channels_last row changed the shared parts
        own[name].to(memory_format=torch.contiguous_format)
    cfg = generator_config(args.steps, args.lcm_steps, cand.lcm)
    pipe = prepare_pipeline(
        assemble_pipeline(own), device=device, scheduler=cfg.scheduler, channels_last=cand.channels_last
    )
    if cand.fp8:
        to_fp8(pipe.unet)
        to_fp8(pipe.controlnet)
    if cand.compiled:
        # What prepare_pipeline(compile=True) does after placement, with the backend exposed.
        batched_vae_decode(pipe.vae, DEFAULT_VAE_BATCH, pad=True)
        compile_pipeline(pipe, cand.mode, args.compile_cache, backend=args.backend)
    dtype = "float16" if device.startswith("cuda") else "float32"
    return AuxGenerator(pipe, cfg, batch_size=batch, device=device, dtype=dtype, pad_batches=cand.compiled)


def measure(gen: Any, items: list, n_timed: int) -> tuple[float, float, float, np.ndarray, bool]:
    """(warm-up s, images/s over `n_timed` items, step ms, float images of the first batch, same
    bytes on a second call). Step ms: one batch at S/2 steps against one at S, on the same pipeline."""
    import torch

    from difaug.diffusion.sampler import AuxGenerator, to_uint8

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    b = gen.batch_size
    for prompt in {it.prompt for it in items} | {items[0].negative_prompt}:
        gen.encode(prompt)  # a worker encodes each prompt once: not part of any timing
    t0 = time.perf_counter()
    first = gen.generate(items[:b])
    sync()
    warm = time.perf_counter() - t0
    failed = [w for w in gen.warnings if "compile failed" in w]
    if failed:
        raise Failed(failed[0])
    graphs = compiled_graphs()
    t0 = time.perf_counter()
    gen.generate(items[:n_timed])
    sync()
    seconds = time.perf_counter() - t0
    if compiled_graphs() != graphs:  # a recompile inside the timing would make the rate meaningless
        raise Failed(f"{compiled_graphs() - graphs} graphs compiled during the timed calls")
    images = gen.sample(items[:b])
    same = all(np.array_equal(r.image, img) for r, img in zip(first, to_uint8(images), strict=True))
    steps = gen.cfg.steps
    half_steps = max(1, steps // 2)
    half = AuxGenerator(
        gen.pipe, replace(gen.cfg, steps=half_steps), batch_size=b, device=gen.device, dtype=gen.dtype,
        pad_batches=gen.pad_batches,
    )  # fmt: skip
    half.generate(items[:b])  # prompts encoded, the scheduler set for S/2; no new network shape
    sync()
    t0 = time.perf_counter()
    half.generate(items[:b])
    sync()
    t_half = time.perf_counter() - t0
    t_full = seconds * b / n_timed
    step_ms = 1000 * (t_full - t_half) / (steps - half_steps) if steps > half_steps else float("nan")
    return warm, n_timed / seconds, step_ms, images, same


def small(x: float) -> str:
    """|Δ| with its digits: fp32 on the CPU differs by ~1e-7, fp16 on a GPU by ~1e-3."""
    if np.isnan(x):
        return "n/a"
    return f"{x:.5f}" if x == 0 or x >= 1e-4 else f"{x:.1e}"


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise `Cut` in this (main) thread after `seconds`; no cap for 0."""

    def cut(signum: int, frame: Any) -> None:
        raise Cut

    if seconds <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def release(gen: Any) -> None:
    """The eager modules back in place: the VAE decoder is shared by every row."""
    from difaug.diffusion.speed import restore_eager

    if gen is not None:
        restore_eager(gen.pipe)


def free() -> None:
    """Compiled code, guards and CUDA graph pools of the row before: each compile its own."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys = [c.key for c in CANDIDATES]
    ap.add_argument(
        "--candidates",
        nargs="+",
        choices=keys,
        default=keys,
        help="which, in this order (default always first)",
    )
    ap.add_argument("--batch", type=int, default=0, help="default 16 on a GPU, 4 on the CPU")
    ap.add_argument("--images", type=int, default=0, help="timed images per row (default 2 batches)")
    ap.add_argument("--size", type=int, default=0, help="default 512 on a GPU, 64 on the CPU")
    ap.add_argument("--steps", type=int, default=0, help="default 20 on a GPU, 6 on the CPU")
    ap.add_argument("--lcm-steps", type=int, default=4)
    ap.add_argument(
        "--backend", default="", help="torch.compile backend: default inductor on a GPU, eager on the CPU"
    )
    ap.add_argument(
        "--compile-cache", default="", help="inductor's cache folder (gpu_e2e.py's: a warm default)"
    )
    ap.add_argument("--budget", type=float, default=0.0, help="seconds for the whole run (0: no limit)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="what `make bench` runs (CPU: the tiny model)")
    args = ap.parse_args()
    start = time.perf_counter()

    import diffusers
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.quick:  # a GPU: the two cheapest compiled rows; the CPU: all but the second LCM row
        keep = ("default", "lcm-2x") if cuda else tuple(k for k in keys if k != "lcm")
        args.candidates = [k for k in args.candidates if k in keep] or ["default"]
    if not cuda:
        torch.set_num_threads(1)
    args.backend = args.backend or ("inductor" if cuda else "eager")
    batch = args.batch or (16 if cuda else 4)
    size = args.size or (512 if cuda else 64)
    args.steps = args.steps or (20 if cuda else 6)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    try:
        import torchao

        tao = f"torchao {torchao.__version__}"
    except Exception:
        tao = "no torchao"
    print(
        f"device {name}, torch {torch.__version__}, diffusers {diffusers.__version__}, {tao}; "
        f"{'SD1.5 architectures, random fp16 weights' if cuda else 'tiny model, fp32'}, {size}², "
        f"UniPC {args.steps} steps with CFG, batch {batch}; backend {args.backend}"
        + (f", budget {args.budget:.0f} s" if args.budget else "")
    )
    parts = random_pipeline_parts(device) if cuda else tiny_parts()
    f = count_flops(size) if cuda else None
    peak = peak_tflops(name, args.peak_tflops) if cuda else 0.0

    chosen = ["default"] + [k for k in args.candidates if k != "default"]  # the yardstick always
    todo = [EAGER] + [c for k in chosen for c in CANDIDATES if c.key == k]
    if any(c.lcm for c in todo):
        todo.insert(1, replace(EAGER, key="eager-lcm", label="eager LCM (reference of LCM rows)", lcm=True))
    n_items = max(args.images or 2 * batch, 2 * batch * max(c.batch_factor for c in todo))
    cfg0 = replace(generator_config(args.steps, args.lcm_steps, False), num_aux=4)
    samples, conds = supports((n_items + 3) // 4, size, cfg0)
    from difaug.diffusion.sampler import make_work_items

    items = [
        it for s, c in zip(samples, conds, strict=True) for it in make_work_items(s, c, (size, size), cfg0)
    ]
    fp8_why = fp8_unavailable(device)

    print(
        f"{'candidate':<40}{'batch':>6}{'warm-up s':>10}{'step ms':>9}{'step MFU':>9}{'images/s':>9}"
        f"{'× default':>10}{'MFU':>7}{'mean |Δ|':>10}{'max |Δ|':>9}{'same':>6}"
    )
    refs: dict[bool, np.ndarray] = {}
    rates: dict[str, float] = {}
    for i, cand in enumerate(todo):
        b = batch * cand.batch_factor
        label = f"{cand.label}{f', batch {b}' if cand.lcm and cand.compiled else ''}"
        left = args.budget - (time.perf_counter() - start) if args.budget else 0.0
        skip = ""
        if cand.fp8 and fp8_why:
            skip = fp8_why
        elif cand.compiled and cand.inductor_only and args.backend != "inductor":
            skip = f"only inductor differs and the backend is {args.backend} (--backend inductor runs it)"
        elif args.budget and cand.key != "default" and cand.compiled and left < cand.est_s:
            skip = f"{left:.0f} s of the budget left, it needs ~{cand.est_s:.0f} s on an H200"
        if skip:
            print(f"{label:<40}skipped: {skip}")
            continue
        gen, result, stop, t0 = None, None, "", time.perf_counter()
        try:
            with (
                time_cap(max(left - 5, 1) if args.budget else 0),
                torch._inductor.config.patch(cand.inductor),
            ):
                gen = build(cand, parts, args, device, b)
                if cand.compiled:  # its artefacts are loaded now; the cache folder stays inductor's
                    args.compile_cache = ""
                result = measure(gen, items, max(args.images or 2 * batch, 2 * b))
        except Cut:
            stop = "cut"
        except Exception as exc:
            stop = f"failed after {time.perf_counter() - t0:.0f} s: {type(exc).__name__}: {str(exc)[:200]}"
        release(gen)  # outside the except blocks: a live traceback would keep the pipeline
        gen = None
        free()
        if stop == "cut":
            print(f"{label:<40}cut after {time.perf_counter() - t0:.0f} s: the budget ran out")
            for later in todo[i + 1 :]:
                print(f"{later.label:<40}not reached")
            break
        if result is None:
            print(f"{label:<40}{stop}")
            continue
        warm, rate, step_ms, images, same = result
        if not cand.compiled:
            refs[cand.lcm] = images
        ref = refs.get(cand.lcm)
        m, w = diff(images[: len(ref)], ref[: len(images)]) if ref is not None else (float("nan"),) * 2
        rates[cand.key] = rate
        steps = args.lcm_steps if cand.lcm else args.steps
        work = flops_per_image(f, steps, cfg=not cand.lcm) if f else 0.0
        step_work = b * (1 if cand.lcm else 2) * (f["controlnet"] + f["unet"]) if f else 0.0
        mfu = f"{100 * work * rate / (peak * 1e12):.1f}%" if work and peak else "n/a"
        step_mfu = (
            f"{100 * step_work / (step_ms / 1000) / (peak * 1e12):.1f}%" if step_work and peak else "n/a"
        )
        base = rates.get("default")
        vs = f"{rate / base:.2f}" if base and not cand.lcm else "—"
        print(
            f"{label:<40}{b:>6}{warm:>10.1f}{step_ms:>9.1f}{step_mfu:>9}{rate:>9.2f}{vs:>10}{mfu:>7}"
            f"{small(m):>10}{small(w):>9}{'yes' if same else 'NO':>6}"
        )
    if args.budget:
        print(f"step_candidates.py: {time.perf_counter() - start:.0f} s of a {args.budget:.0f} s budget")
    base = rates.get("default")
    rivals = {k: r for k, r in rates.items() if k not in ("default", "eager", "eager-lcm") and "lcm" not in k}
    if base and rivals:
        best = max(rivals, key=lambda k: rivals[k])
        print(f"step_candidates_best: {best} {rivals[best] / base:.2f}× default")
    elif base:
        print("step_candidates_best: default (no other step candidate measured)")
    else:
        print("step_candidates_best: n/a (the default was not measured)")


if __name__ == "__main__":
    main()
