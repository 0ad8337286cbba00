"""Loading a job's pipeline from its `ModelSpec`, and preparing it to sample.

`load_pipeline` loads a `StableDiffusionControlNetPipeline` with `from_pretrained` (safetensors
preferred, `.bin` when a repo has only that; `HF_HUB_OFFLINE=1` read at call time means "local
files and cache only"). `load_scoring_pipeline` loads what DiffSeg needs of the base model alone
(no ControlNet), prepared the same way. A missing or unreachable weight raises `ModelLoadError`,
one message that names the id and how to point at a local folder. `prepare_pipeline` sets the
scheduler, fuses an LCM-LoRA and applies the speed options of `difaug.diffusion.speed`.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difaug.core.config import DEFAULT_VAE_BATCH, SCHEDULERS, ConfigError
from difaug.core.device import resolve_device, resolve_dtype, torch_dtype
from difaug.core.hub import hub_offline, looks_local
from difaug.diffusion.specs import BUNDLE_INDEX, ModelLoadError, ModelSpec
from difaug.diffusion.speed import (
    DEFAULT_COMPILE_MODE,
    batched_vae_decode,
    check_speed_options,
    compile_pipeline,
    fuse_qkv_projections,
    networks,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

# Each name of `difaug.core.config.SCHEDULERS` → (diffusers class, extra config). Built from the
# base model's own scheduler config, so beta schedule and timestep spacing stay those the model
# was trained with.
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": ("PNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

_HOW_TO_POINT = (
    "point at local weights instead: --model DIR (a folder made by `difaug models make-tiny`, or any "
    "folder with a difaug-models.json), --base-model DIR (a diffusers SD1.5 folder with "
    "model_index.json), --controlnet DIR (a ControlNet folder with config.json)"
)


def _check_local(ref: str, what: str, marker: str) -> None:
    p = Path(ref).expanduser()
    if not p.is_dir():
        kind = "a file, not a folder" if p.exists() else "no such folder"
        raise ModelLoadError(f"cannot load the {what} {ref!r}: {kind}; {_HOW_TO_POINT}", permanent=True)
    if not (p / marker).is_file():
        if (p / BUNDLE_INDEX).is_file():
            raise ModelLoadError(
                f"cannot load the {what} {ref!r}: it is a difaug model bundle; pass it as --model {ref}",
                permanent=True,
            )
        raise ModelLoadError(
            f"cannot load the {what} {ref!r}: the folder has no {marker}, so it is not in the "
            f"diffusers layout; {_HOW_TO_POINT}",
            permanent=True,
        )


def check_local_models(spec: ModelSpec, condition: str) -> None:
    """Each local weight the job uses is there in the layout it claims (a diffusers folder for the
    base model and the ControlNet, `ControlNetHED.pth` or a folder holding it for HED): checked on
    the driver before the plan, without the network. Hub ids are left to the loaders."""
    if looks_local(spec.base):
        _check_local(spec.base, "base model", "model_index.json")
    if looks_local(spec.controlnet):
        _check_local(spec.controlnet, "ControlNet", "config.json")
    if condition in ("hed", "scribble"):
        from difaug.conditions.hed import HedWeightsError, local_hed_weights

        try:
            local_hed_weights(spec.hed_weights)
        except HedWeightsError as e:  # the resolver's own words, as a load error no retry fixes
            raise ModelLoadError(str(e), permanent=True) from None


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


def _load_base(loader: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    """The base model through `loader` (a diffusers pipeline class's `from_pretrained`), no safety checker."""
    return _from_pretrained(
        loader,
        spec.base,
        "base model",
        "model_index.json",
        safety_checker=None,
        requires_safety_checker=False,
        **kwargs,
    )


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler from the registry, configured from the base model's scheduler config."""
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"scheduler={name!r} is not one of: {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULER_CLASSES[name]
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
    tdtype = torch_dtype(resolve_dtype(dtype, device))
    # Before minutes of loading rather than after.
    check_speed_options(compile=compile, compile_mode=compile_mode, offload=offload, vae_batch=vae_batch)
    with quiet_loading():
        controlnet = _from_pretrained(
            ControlNetModel.from_pretrained, spec.controlnet, "ControlNet", "config.json", torch_dtype=tdtype
        )
        pipe = _load_base(
            StableDiffusionControlNetPipeline.from_pretrained, spec, controlnet=controlnet, torch_dtype=tdtype
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
        pipe = _load_base(StableDiffusionPipeline.from_pretrained, spec, torch_dtype=tdtype)
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

    check_speed_options(compile=compile, compile_mode=compile_mode, offload=offload, vae_batch=vae_batch)
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
        for module in networks(pipe):
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


def execution_device(pipe: Any) -> Any:
    """The `torch.device` a pipeline computes on: where `prepare_pipeline` placed it (also with
    CPU offload, whose weights rest on the CPU), else diffusers' public `pipe.device`."""
    recorded = getattr(pipe, "difaug_device", None)
    return recorded if recorded is not None else pipe.device


def size_multiple(pipe: Any) -> int:
    """Image sides a pipeline takes are multiples of this: the VAE's scale factor times one halving
    per extra UNet block (SD1.5: 8 × 8 = 64; the tiny model: 2 × 2 = 4)."""
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def encode_alone(pipe: Any, prompt: str) -> Any:
    """`(1, 77, D)` text embeddings of `prompt`, encoded alone exactly as the pipeline encodes a
    prompt or a negative prompt (padding to 77 tokens, no attention mask, no guidance batch)."""
    import torch

    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(
            prompt, execution_device(pipe), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    return embeds


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
