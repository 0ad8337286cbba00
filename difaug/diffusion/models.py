"""Model specs and pipeline loading.

A `ModelSpec` names the three weights a job needs: the Stable Diffusion 1.5 base pipeline, the
ControlNet for the job's condition, and the HED annotator weights. Each is a Hugging Face hub id or
a local folder. `JobConfig.model` may name a *bundle*: a folder holding `difaug-models.json`
(written by `difaug.testing.tiny.make_tiny` / `difaug models make-tiny`, or by hand for a set of downloaded weights),
whose entries are paths relative to the bundle folder:

    {"base_model": "stable-diffusion-v1-5",
     "controlnets": {"hed": "sd-controlnet-hed", "seg": "sd-controlnet-seg", "scribble": "sd-controlnet-scribble"},
     "hed_weights": "Annotators"}

`load_pipeline` loads a `StableDiffusionControlNetPipeline` with `from_pretrained` (safetensors
preferred, `.bin` when a repo has only that; `HF_HUB_OFFLINE=1` read at call time means "local
files and cache only"). `load_scoring_pipeline` loads what DiffSeg needs of the base model alone
(no ControlNet), prepared the same way. A missing or unreachable weight raises `ModelLoadError`,
one message that names the id and how to point at a local folder.

Speed options: what each knob buys and costs, with measurements, is in one place — the README's
"Speed options" section. Here: `prepare_pipeline` (the fast CUDA path: fused QKV, batched VAE
decode, contiguous memory format), `decide_compile` / `runtime_for_plan` (`compile: auto`),
`compile_pipeline` / `use_compile_cache` / `save_compile_cache` / `restore_eager` (torch.compile,
its shared cache folder and the eager fallback); DeepCache-style caching is `difaug.diffusion.deepcache`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difaug.core.config import (
    COMPILE_MODES,
    DEFAULT_BASE_MODEL,
    DEFAULT_COMPILE_MIN_IMAGES,
    DEFAULT_CONTROLNETS,
    DEFAULT_HED_WEIGHTS,
    DEFAULT_VAE_BATCH,
    ConfigError,
    JobConfig,
    compile_setting,
)

# Device and dtype: one implementation for the package (difaug.core.device); `models.resolve_device`
# and `models.resolve_dtype` stay importable from here.
from difaug.core.device import resolve_device, resolve_dtype, torch_dtype
from difaug.core.errors import DifaugError

if TYPE_CHECKING:
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

BUNDLE_INDEX = "difaug-models.json"
BASE_DIRNAME = "stable-diffusion-v1-5"
HED_DIRNAME = "Annotators"
HED_FILENAME = "ControlNetHED.pth"
DEFAULT_COMPILE_MODE = "default"
COMPILE_CACHE_DIRNAME = ".difaug-compile-cache"

# name → (diffusers class, extra config). Built from the base model's own scheduler config, so
# beta schedule and timestep spacing stay those the model was trained with.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HOW_TO_POINT = (
    "point at local weights instead: --model DIR (a folder made by `difaug models make-tiny`, or any "
    "folder with a difaug-models.json), --base-model DIR (a diffusers SD1.5 folder with "
    "model_index.json), --controlnet DIR (a ControlNet folder with config.json)"
)


class ModelLoadError(DifaugError, RuntimeError):
    """Weights that cannot be loaded; the message names the id and how to point at a local copy."""


# --------------------------------------------------------------------------------------------
# Model spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights of one job come from: hub ids or local folders."""

    base: str = DEFAULT_BASE_MODEL
    controlnet: str = DEFAULT_CONTROLNETS["hed"]
    hed_weights: str = DEFAULT_HED_WEIGHTS

    @classmethod
    def from_config(cls, cfg: JobConfig) -> ModelSpec:
        """Resolve `cfg.model` (a bundle or a base model) and the single-part overrides.

        Precedence per part: an explicit `base_model` / `controlnet` / `hed_weights` (one that
        differs from its default) > the bundle's entry > the default."""
        base, controlnet, hed = DEFAULT_BASE_MODEL, cfg.controlnet_id, DEFAULT_HED_WEIGHTS
        if cfg.model:
            bundle = read_bundle(cfg.model)
            if bundle is None:
                base = cfg.model
            else:
                base = bundle["base_model"]
                hed = bundle.get("hed_weights") or hed
                nets = bundle.get("controlnets", {})
                if not cfg.controlnet:
                    if cfg.condition not in nets:
                        raise ModelLoadError(
                            f"{bundle['index']} has no ControlNet for condition {cfg.condition!r} "
                            f"(it has: {', '.join(sorted(nets)) or 'none'}); add one under "
                            f"'controlnets' or pass --controlnet DIR"
                        )
                    controlnet = nets[cfg.condition]
        if cfg.base_model != DEFAULT_BASE_MODEL:
            base = cfg.base_model
        if cfg.hed_weights != DEFAULT_HED_WEIGHTS:
            hed = cfg.hed_weights
        return cls(base=base, controlnet=controlnet, hed_weights=hed)


def read_bundle(path: str | Path) -> dict[str, Any] | None:
    """The bundle index at `path` (a folder with difaug-models.json, or that file) with absolute
    paths, or None when `path` is not a bundle."""
    p = Path(path).expanduser()
    index = p if p.name == BUNDLE_INDEX else p / BUNDLE_INDEX
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index}: not a readable bundle index ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("base_model"), str):
        raise ModelLoadError(f"{index}: a bundle index needs a 'base_model' entry (a folder name)")
    root = index.parent.resolve()

    def absolute(rel: str) -> str:
        return str((root / rel).resolve())

    out: dict[str, Any] = {"index": str(index), "base_model": absolute(data["base_model"])}
    out["controlnets"] = {k: absolute(v) for k, v in (data.get("controlnets") or {}).items()}
    if data.get("hed_weights"):
        out["hed_weights"] = absolute(data["hed_weights"])
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time (its constant is read at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_local(ref: str) -> bool:
    """A path rather than a hub id: it exists, or it cannot be a hub id (absolute, ./, ~, 2+ slashes)."""
    return Path(ref).expanduser().exists() or not _HUB_ID.match(ref)


def _check_local(ref: str, what: str, marker: str) -> None:
    p = Path(ref).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"cannot load the {what} {ref!r}: no such folder; {_HOW_TO_POINT}")
    if not (p / marker).is_file():
        if (p / BUNDLE_INDEX).is_file():
            raise ModelLoadError(
                f"cannot load the {what} {ref!r}: it is a difaug model bundle; pass it as --model {ref}"
            )
        raise ModelLoadError(
            f"cannot load the {what} {ref!r}: the folder has no {marker}, so it is not in the "
            f"diffusers layout; {_HOW_TO_POINT}"
        )


def _hub_failure(ref: str, what: str, exc: BaseException) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if hub_offline():
        where = "it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading"
    else:
        where = f"it could not be fetched from the Hugging Face hub ({reason})"
    return ModelLoadError(
        f"cannot load the {what} {ref!r}: {where}. Download it once on a machine with internet "
        f"(`hf download {ref}`, then copy the cache or the folder), or {_HOW_TO_POINT}"
    )


def _from_pretrained(loader: Any, ref: str, what: str, marker: str, **kwargs: Any) -> Any:
    """`loader(ref, **kwargs)` with our errors: a local folder is checked first (clear message
    instead of diffusers' guesses); a hub failure becomes one ModelLoadError."""
    local = looks_local(ref)
    if local:
        _check_local(ref, what, marker)
        ref = str(Path(ref).expanduser())
    # use_safetensors=None: safetensors when the repo has them, else the .bin weights.
    kwargs.setdefault("use_safetensors", None)
    if hub_offline() or local:
        kwargs["local_files_only"] = True
    try:
        return loader(ref, **kwargs)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(f"cannot load the {what} from {ref!r}: {exc}") from exc
        raise _hub_failure(ref, what, exc) from exc


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler from the registry, configured from the base model's scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler={name!r} is not one of: {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    # Only the keys this scheduler knows (PNDM's skip_prk_steps would make LCM log a warning),
    # and diffusers' private ones: `_use_default_values` lists the settings the base config
    # left at *its* class default (e.g. PNDM's timestep_spacing), which must not carry over.
    known = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in dict(base_config).items() if k in known or k.startswith("_")}
    return cls.from_config(config, **extra)


def load_pipeline(
    spec: ModelSpec,
    *,
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "unipc",
    compile: bool = False,
    compile_mode: str = DEFAULT_COMPILE_MODE,
    lcm_lora: str = "",
    offload: bool = False,
    vae_batch: int = DEFAULT_VAE_BATCH,
    compile_cache_dir: str = "",
) -> StableDiffusionControlNetPipeline:
    """Load base + ControlNet as a `StableDiffusionControlNetPipeline` ready to sample.

    See the README's "Speed options" for what `dtype`, `compile`, `lcm_lora` and
    `offload` trade. With `lcm_lora` the scheduler is always LCM."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    device = resolve_device(device)
    dtype_name = resolve_dtype(dtype, device)
    if compile and offload:  # prepare_pipeline refuses it too; here before minutes of loading
        raise ConfigError("compile and offload cannot be combined; choose one")
    tdtype = torch_dtype(dtype_name)

    with quiet_loading():
        controlnet = _from_pretrained(
            ControlNetModel.from_pretrained, spec.controlnet, "ControlNet", "config.json", torch_dtype=tdtype
        )
        pipe = _from_pretrained(
            StableDiffusionControlNetPipeline.from_pretrained,
            spec.base,
            "base model",
            "model_index.json",
            controlnet=controlnet,
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=tdtype,
        )
    return prepare_pipeline(
        pipe,
        device=device,
        scheduler=scheduler,
        lcm_lora=lcm_lora,
        compile=compile,
        compile_mode=compile_mode,
        offload=offload,
        vae_batch=vae_batch,
        compile_cache_dir=compile_cache_dir,
    )


def load_scoring_pipeline(
    spec: ModelSpec,
    *,
    device: str = "auto",
    dtype: str = "auto",
    lcm_lora: str = "",
) -> StableDiffusionPipeline:
    """What DiffSeg needs of the base model — UNet, VAE, tokenizer and text encoder (the empty
    prompt's embedding) — as a `StableDiffusionPipeline`, without the ControlNet (`difaug score`,
    `difaug segment`; `spec.controlnet` is not read).

    Loaded from the same weights in the same dtype and prepared by the same `prepare_pipeline` as
    `load_pipeline`'s (device, fused QKV on CUDA, the LCM-LoRA fused into the UNet when the job used
    one), so its drift scores equal those computed at shard time on the generator's pipeline. Not
    compiled and not offloaded: DiffSeg runs the UNet eagerly, one pass per batch."""
    from diffusers import StableDiffusionPipeline

    device = resolve_device(device)
    tdtype = torch_dtype(resolve_dtype(dtype, device))
    with quiet_loading():
        pipe = _from_pretrained(
            StableDiffusionPipeline.from_pretrained,
            spec.base,
            "base model",
            "model_index.json",
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=tdtype,
        )
    return prepare_pipeline(pipe, device=device, lcm_lora=lcm_lora)


def prepare_pipeline(
    pipe: Any,
    *,
    device: str,
    scheduler: str = "unipc",
    lcm_lora: str = "",
    compile: bool = False,
    compile_mode: str = DEFAULT_COMPILE_MODE,
    offload: bool = False,
    vae_batch: int = DEFAULT_VAE_BATCH,
    fuse_qkv: bool | None = None,
    channels_last: bool = False,
    compile_cache_dir: str = "",
) -> Any:
    """Scheduler, LoRA fusion, fused QKV, batched VAE decode, placement and compilation for a
    loaded (or, in benchmarks, freshly built) pipeline already in its final dtype; with or without
    a ControlNet (`load_scoring_pipeline`'s has none).

    `fuse_qkv` None = on for CUDA (one GEMM instead of three per self-attention); `channels_last`
    off by default (contiguous measured faster in eager on Hopper, see "Speed options")."""
    import torch

    if compile and offload:
        raise ConfigError("compile and offload cannot be combined; choose one")
    if compile and compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode={compile_mode!r} is not one of: {', '.join(COMPILE_MODES)}")
    if vae_batch < 1:
        raise ConfigError(f"vae_batch must be >= 1, got {vae_batch}")
    cuda = torch.device(device).type == "cuda"
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("lcm" if lcm_lora else scheduler, pipe.scheduler.config)
    if lcm_lora:
        with quiet_loading():
            _fuse_lora(pipe, lcm_lora)
    if cuda if fuse_qkv is None else fuse_qkv:
        fuse_qkv_projections(pipe)
    batched_vae_decode(pipe.vae, vae_batch, pad=compile)
    if channels_last:
        for module in _networks(pipe):
            module.to(memory_format=torch.channels_last)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    # Where the pipeline computes, for `execution_device` (with offload its weights rest on the CPU).
    pipe.difaug_device = torch.device(device)
    if compile:
        compile_pipeline(pipe, compile_mode, compile_cache_dir)
    return pipe


def _networks(pipe: Any) -> list[Any]:
    """The UNet, the ControlNet (when the pipeline has one) and the VAE."""
    return [net for net in (pipe.unet, getattr(pipe, "controlnet", None), pipe.vae) if net is not None]


def execution_device(pipe: Any) -> Any:
    """The `torch.device` a pipeline computes on: where `prepare_pipeline` placed it (also with
    CPU offload, whose weights rest on the CPU), else diffusers' public `pipe.device`."""
    recorded = getattr(pipe, "difaug_device", None)
    return recorded if recorded is not None else pipe.device


# --------------------------------------------------------------------------------------------
# The fast path: fused QKV, batched VAE decode, torch.compile and its cache
# --------------------------------------------------------------------------------------------


def fuse_qkv_projections(pipe: Any) -> None:
    """One projection GEMM for q, k, v of every self-attention (k, v for cross-attention) in the
    UNet, the ControlNet and the VAE. The fused weights are the concatenated originals: the
    images change only by the summation order of the matmuls (fp tolerance)."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    for net in _networks(pipe):
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
      "auto" into "off", see `runtime_for_plan`). Below that, the warm-up (about a minute per
      worker with a cold cache) is not repaid: at the measured ~0.07 s saved per image it takes
      about 1000 images to break even."""
    value = compile_setting(setting)
    if value != "auto":
        return value == "on"
    if offload or not device.startswith("cuda"):
        return False
    return planned_images is None or planned_images >= min_images


def runtime_for_plan(runtime: Any, out: str, planned_images: int) -> Any:
    """The driver's half of the speed settings, which needs the plan: `compile: auto` for a job
    shorter than `compile_min_images` becomes "off", and the compile cache folder defaults to
    `OUT/.difaug-compile-cache` (shared by the workers of this run and by its reruns)."""
    from dataclasses import replace

    changes: dict[str, Any] = {}
    setting = compile_setting(runtime.compile)
    if setting == "auto" and planned_images < runtime.compile_min_images:
        changes["compile"] = "off"
    if not runtime.compile_cache_dir:
        changes["compile_cache_dir"] = str(Path(out) / COMPILE_CACHE_DIRNAME)
    return replace(runtime, **changes) if changes else runtime


# Inductor settings that measurably help the SD UNet (issue 14: 1×1 convolutions as GEMMs). The
# autotuning ones (`coordinate_descent_tuning`, max-autotune) are left out of the default: they
# pick kernels by timing them, which gives up bit-for-bit equal reruns.
INDUCTOR_OPTIONS: dict[str, Any] = {"conv_1x1_as_mm": True}
MEGA_CACHE_FILE = "torch-compile-artifacts.bin"


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

    if not cache_dir:
        return 0
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    data = saved[0]
    from difaug.core import fsio

    fsio.write_bytes(Path(cache_dir).expanduser() / MEGA_CACHE_FILE, data)
    return len(data)


COMPILED_PARTS = ("unet", "controlnet", "decoder")


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
    for key, value in INDUCTOR_OPTIONS.items():
        setattr(torch._inductor.config, key, value)
    owners = {"unet": pipe, "controlnet": pipe, "decoder": pipe.vae}
    pipe._difaug_eager = {part: getattr(owners[part], part) for part in parts}
    options = {"mode": mode} if backend == "inductor" else {}
    for part in parts:
        # fullgraph=False: a graph break costs a little speed, a hard failure costs the job.
        module = torch.compile(getattr(owners[part], part), backend=backend, dynamic=False, **options)
        setattr(owners[part], part, module)


def is_compiled(pipe: Any) -> bool:
    return getattr(pipe, "_difaug_eager", None) is not None


def restore_eager(pipe: Any) -> None:
    """Undo `compile_pipeline`: the eager modules back in place (same weights, same device)."""
    eager = getattr(pipe, "_difaug_eager", None)
    if eager is None:
        return
    owners = {"unet": pipe, "controlnet": pipe, "decoder": pipe.vae}
    for part, module in eager.items():
        setattr(owners[part], part, module)
    pipe._difaug_eager = None
    if getattr(pipe.vae, "_difaug_decode", None) is not None:
        pipe.vae._difaug_decode = (pipe.vae._difaug_decode[0], False)


def _fuse_lora(pipe: Any, ref: str) -> None:
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError("lcm_lora needs the `peft` package: pip install 'difaug[lcm]'") from exc
    kwargs: dict[str, Any] = {}
    if looks_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelLoadError(f"cannot load the LCM-LoRA {ref!r}: no such file or folder")
        kwargs["local_files_only"] = True
        ref = str(path)
    elif hub_offline():
        kwargs["local_files_only"] = True
    try:
        pipe.load_lora_weights(ref, **kwargs)
    except (OSError, ValueError) as exc:
        if looks_local(ref):
            raise ModelLoadError(f"cannot load the LCM-LoRA from {ref!r}: {exc}") from exc
        raise _hub_failure(ref, "LCM-LoRA", exc) from exc
    # Fused weights cost nothing per step; the LoRA layers themselves are then dropped.
    pipe.fuse_lora()
    pipe.unload_lora_weights()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-component progress bars while loading or saving (a worker log is not a terminal),
    and no warning that `torch_dtype` was renamed (we keep it: older diffusers releases know no `dtype`)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    states = [(m, m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _ in states:
        m.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            yield
    finally:
        for m, enabled in states:
            if enabled:
                m.enable_progress_bar()
