"""Speed options of a loaded pipeline: fused QKV, batched VAE decode, torch.compile and its cache.

What each option buys and costs, with measurements, is in one place: the README's "Speed options"
section. Here: `fuse_qkv_projections` and `batched_vae_decode` (the fast path `prepare_pipeline`
sets up), `decide_compile` (`compile: auto` on a worker), `compile_pipeline` /
`torch_compile_options` / `compiled_shapes_allowed` / `use_compile_cache` / `save_compile_cache` /
`first_call_done` (torch.compile and its shared cache folder) and `is_compiled` / `restore_eager` (the eager
fallback). DeepCache-style feature caching is `difaug.diffusion.deepcache`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from difaug.core.config import (
    COMPILE_MODES,
    DEFAULT_COMPILE_MIN_IMAGES,
    ConfigError,
    check_compile_offload,
    compile_setting,
)

DEFAULT_COMPILE_MODE = "default"
COMPILE_CACHE_DIRNAME = ".difaug-compile-cache"
# Inductor settings that measurably help the SD UNet (1×1 convolutions as GEMMs). The autotuning
# ones (`coordinate_descent_tuning`, max-autotune) are left out of the default: they pick kernels
# by timing them, which gives up bit-for-bit equal reruns.
INDUCTOR_OPTIONS: dict[str, Any] = {"conv_1x1_as_mm": True}
MEGA_CACHE_FILE = "torch-compile-artifacts.bin"
# Graphs one compiled module may hold: with static shapes, one per working size (the short side
# at `resolution`, the long one any multiple of 64 up to `max_aspect` times it: PASCAL's aspect
# ratios at 512 give well over 8). Dynamo's own limit, 8, would run the 9th size onward eagerly
# without an error.
COMPILED_SHAPES_LIMIT = 128
COMPILED_PARTS = ("unet", "controlnet", "decoder")


def check_speed_options(*, compile: bool, compile_mode: str, offload: bool, vae_batch: int) -> None:
    """Refuse settings a pipeline cannot be prepared with (a `RuntimeConfig` refuses them up
    front; this is for pipelines built without one, as in benchmarks)."""
    check_compile_offload(compile, offload)
    if compile and compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode={compile_mode!r} is not one of: {', '.join(COMPILE_MODES)}")
    if vae_batch < 1:
        raise ConfigError(f"vae_batch must be >= 1, got {vae_batch}")


def networks(pipe: Any) -> list[Any]:
    """The UNet, the ControlNet (when the pipeline has one) and the VAE."""
    return [net for net in (pipe.unet, getattr(pipe, "controlnet", None), pipe.vae) if net is not None]


def fuse_qkv_projections(pipe: Any) -> None:
    """One projection GEMM for q, k, v of every self-attention (k, v for cross-attention) in the
    UNet, the ControlNet and the VAE. The fused weights are the concatenated originals: the
    images change only by the summation order of the matmuls (fp tolerance)."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    for net in networks(pipe):
        # Copied from diffusers.models.unets.unet_2d_condition.UNet2DConditionModel.fuse_qkv_projections:
        # the ControlNet's own (from AttentionMixin) fuses nothing of diffusers' `Attention`
        # modules and keeps the unfused processor.
        if any("Added" in type(p).__name__ for p in net.attn_processors.values()):
            continue  # added-KV attention cannot be fused (not in SD1.5)
        for module in net.modules():
            if isinstance(module, Attention):
                module.fuse_projections(fuse=True)
        net.set_attn_processor(FusedAttnProcessor2_0())


def batched_vae_decode(vae: Any, chunk: int, *, pad: bool = False) -> None:
    """Decode latents `chunk` at a time instead of one at a time (diffusers' slicing) or all at
    once: batched convolutions are about twice as fast per image as single ones, and a bounded
    chunk keeps the decoder's activations bounded (≈ 0.5 GB per 512² image in fp16).

    Every image is decoded on its own in effect (GroupNorm and convolutions are per sample), so
    an image does not depend on its batch mates beyond fp summation order. `pad`: fill the last
    chunk to `chunk` with copies (dropped after), so a compiled decoder sees one shape."""
    import torch

    if getattr(vae, "_difaug_decode", None) is not None:
        vae._difaug_decode = (chunk, pad)
        return
    vae.use_slicing = False
    original = vae.decode  # bound method (with diffusers' offload hook, if any)
    vae._difaug_decode = (chunk, pad)

    def decode(z: Any, return_dict: bool = True, generator: Any = None) -> Any:
        from diffusers.models.autoencoders.vae import DecoderOutput

        size, padded = vae._difaug_decode
        parts = []
        for part in z.split(size):
            n = part.shape[0]
            if padded and n < size:
                part = torch.cat([part, part[-1:].expand(size - n, *part.shape[1:])])
            parts.append(original(part, return_dict=False)[0][:n])
        decoded = torch.cat(parts)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    vae.decode = decode


def decide_compile(
    setting: bool | str,
    device: str,
    planned_images: int | None = None,
    min_images: int = DEFAULT_COMPILE_MIN_IMAGES,
    *,
    offload: bool = False,
) -> bool:
    """Whether to `torch.compile` (a pure decision; `compile:` in the YAML, `--compile/--no-compile`).

    - "on" / True and "off" / False are obeyed as given;
    - "auto": on only for a CUDA device, without `offload`, and when the job plans at least
      `min_images` images (`None` = not known here: the driver already turned a short job's
      "auto" into "off"). Below that, the warm-up (about a minute per worker with a cold cache)
      is not repaid: at the measured ~0.07 s saved per image it takes about 1000 images to break
      even."""
    value = compile_setting(setting)
    if value != "auto":
        return value == "on"
    if offload or not device.startswith("cuda"):
        return False
    return planned_images is None or planned_images >= min_images


def use_compile_cache(cache_dir: str) -> None:
    """Point inductor's on-disk caches (FX graphs, Triton kernels, autotuning results) at
    `cache_dir` and load the portable artefacts a previous worker saved there, so a second worker,
    a retry or a rerun skips most of the compilation. Must run before the first compiled call."""
    import torch

    if not cache_dir:
        return
    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    torch._inductor.config.fx_graph_cache = True
    blob = folder / MEGA_CACHE_FILE
    if blob.is_file():
        with contextlib.suppress(Exception):  # a stale or foreign file only costs a recompile
            torch.compiler.load_cache_artifacts(blob.read_bytes())


def save_compile_cache(cache_dir: str) -> int:
    """Write the artefacts compiled so far (`torch.compiler.save_cache_artifacts`) into
    `cache_dir` atomically; returns the bytes written (0 when there is nothing to save)."""
    import torch

    from difaug.core import fsio

    if not cache_dir:
        return 0
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    data = saved[0]
    fsio.write_bytes(Path(cache_dir).expanduser() / MEGA_CACHE_FILE, data)
    return len(data)


def first_call_done(
    shapes: set[tuple[int, ...]],
    shape: tuple[int, ...],
    started: float,
    cache_dir: str,
    warn: Callable[[str], None],
) -> float:
    """Book the first call of a compiled callable with a new `shape` (where it compiled, or loaded
    the compilation from the cache): save the cache, remember the shape, return the call's seconds
    since `started` (`time.perf_counter`). For the generator and the compiled scoring pass alike.
    A cache that cannot be saved is a warning: a read-only or full folder costs the next worker
    time only."""
    try:
        save_compile_cache(cache_dir)
    except OSError as exc:
        warn(f"compile cache not saved: {exc}")
    shapes.add(shape)
    return time.perf_counter() - started


@contextlib.contextmanager
def compiled_shapes_allowed() -> Iterator[None]:
    """Around a call of compiled modules: up to `COMPILED_SHAPES_LIMIT` graphs each instead of
    dynamo's 8. Patched in the calling thread, where dynamo reads it (since torch 2.12 its config
    overrides are thread-local, and a shard calls the models from its device thread)."""
    import torch

    with torch._dynamo.config.patch(recompile_limit=COMPILED_SHAPES_LIMIT):
        yield


def _owners(pipe: Any) -> dict[str, Any]:
    """The object holding each compilable part as an attribute of that name."""
    return {"unet": pipe, "controlnet": pipe, "decoder": pipe.vae}


def compile_pipeline(
    pipe: Any,
    mode: str = DEFAULT_COMPILE_MODE,
    cache_dir: str = "",
    *,
    backend: str = "inductor",
    parts: tuple[str, ...] = COMPILED_PARTS,
) -> None:
    """`torch.compile` the UNet, the ControlNet and the VAE decoder with static shapes (the
    generator pads batches to `batch_size`, the VAE decode pads chunks to `vae_batch`), keeping
    the eager modules in `pipe._difaug_eager` so a failed compilation can fall back to them
    (`restore_eager`). Compilation itself happens at the first call of each shape. `backend` and
    `parts` exist for tests (inductor's C++ compile of all three takes minutes on a small CPU)."""
    import torch

    use_compile_cache(cache_dir)
    owners = _owners(pipe)
    pipe._difaug_eager = {part: getattr(owners[part], part) for part in parts}
    pipe._difaug_compile_options = {"backend": backend, "mode": mode}  # the scoring pass compiles alike
    for part in parts:
        # fullgraph=False: a graph break costs a little speed, a hard failure costs the job.
        module = torch.compile(
            getattr(owners[part], part), dynamic=False, **torch_compile_options(mode, backend)
        )
        setattr(owners[part], part, module)


def torch_compile_options(mode: str, backend: Any) -> dict[str, Any]:
    """`torch.compile`'s keyword arguments for `mode` on `backend`: for inductor, the mode's own
    options (`torch._inductor.list_mode_options`) and `INDUCTOR_OPTIONS`, passed with each compile.
    Setting them on `torch._inductor.config` instead would not reach the job's compilation: since
    torch 2.12 its overrides are thread-local (pytorch#173568), and a shard compiles on its device
    thread."""
    import torch

    if backend != "inductor":
        return {"backend": backend}
    options = {**torch._inductor.list_mode_options(mode, dynamic=False), **INDUCTOR_OPTIONS}
    return {"backend": backend, "options": options}


def is_compiled(pipe: Any) -> bool:
    return getattr(pipe, "_difaug_eager", None) is not None


def restore_eager(pipe: Any) -> None:
    """Undo `compile_pipeline`: the eager modules back in place (same weights, same device)."""
    eager = getattr(pipe, "_difaug_eager", None)
    if eager is None:
        return
    owners = _owners(pipe)
    for part, module in eager.items():
        setattr(owners[part], part, module)
    pipe._difaug_eager = None
    if getattr(pipe.vae, "_difaug_decode", None) is not None:
        pipe.vae._difaug_decode = (pipe.vae._difaug_decode[0], False)
