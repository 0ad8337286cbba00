"""One resolved job configuration: defaults < YAML file < CLI flags.

Two halves, because they play different roles in a resumable run:
- `JobConfig` says *what* is produced. It is fingerprinted into the plan; a rerun with a different
  one into the same run directory is refused.
- `RuntimeConfig` says *how* it is produced (cluster, device, batch size, retries). It may change
  between a run and its resume: the images do not depend on it beyond floating-point tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from difaug.core.errors import DifaugError
from difaug.core.geometry import DEFAULT_RESOLUTION
from difaug.core.presets import apply_preset

CONDITIONS = ("seg", "hed", "scribble")
CONDITION_STYLES = ("diffss", "upstream")
SCHEDULERS = ("unipc", "ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lcm")
CLUSTERS = ("sync", "local", "cuda", "slurm")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SCORES = ("diffseg", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SETTINGS = ("auto", "on", "off")
DEFAULT_COMPILE_MIN_IMAGES = 1000
DEFAULT_VAE_BATCH = 8
# The only placeholder a prompt template may hold (filled per row in difaug.diffusion.sampler.sample_prompt).
PROMPT_FIELDS = ("class_name",)
# Input size guards (RuntimeConfig.max_*): no real FSS dataset comes near them (PASCAL ≤ 500 px,
# COCO ≤ 640 px, FSS-1000 224 px), but a 2000×8 strip would otherwise become a 128000×512 working
# image and take the machine's memory with it.
DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_ASPECT = 16.0
DEFAULT_MAX_PIXELS = 150_000_000

# Aux images per support: a few in every FSS setting; a typo like 1000000000 is refused up front.
MAX_NUM_AUX = 1000

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNETS = {c: f"lllyasviel/sd-controlnet-{c}" for c in CONDITIONS}
DEFAULT_HED_WEIGHTS = "lllyasviel/Annotators"
DEFAULT_PROMPT = "a real shot photo of {class_name}, best quality, extremely detailed"
DEFAULT_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, artwork"
)


class ConfigError(DifaugError, ValueError):
    """A configuration value that cannot work; the message names the key and the allowed values."""


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = "",
    models: bool = False,
    default_factory: Any = MISSING,
) -> Any:
    """A config field with what every consumer derives from it, so no list of keys is kept by hand:
    `help` (the CLI's and the docs' one line), `flag` (the CLI flag: "" = `--name-with-dashes`,
    None = YAML only) and `models` (models are built with it: the shard task's per-process model
    cache is keyed on it, so changing it between runs of one process reloads them)."""
    meta = {"help": help, "flag": flag, "models": models}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def cli_flag(f: Field[Any]) -> str | None:
    """The CLI flag of a config field (`--num-aux`; `--offload/--no-offload` for a switch), or None
    for a key set only in YAML."""
    flag = f.metadata.get("flag", "")
    if flag is None:
        return None
    name = flag or "--" + f.name.replace("_", "-")
    return f"{name}/--no-{name.removeprefix('--')}" if "bool" in str(f.type) else name


def model_settings(runtime: RuntimeConfig) -> tuple[tuple[str, Any], ...]:
    """The runtime settings models are built with (the fields marked `models`), as a hashable key.
    `compile` is spelled canonically, and the compile cache folder counts only when compiling can
    happen, so equivalent settings reuse the loaded models."""
    values = {f.name: getattr(runtime, f.name) for f in fields(RuntimeConfig) if f.metadata.get("models")}
    values["compile"] = compile_setting(runtime.compile)
    values["hed_batch"] = runtime.hed_batch_size
    if values["compile"] == "off":
        values["compile_cache_dir"] = ""
    return tuple(values.items())


@dataclass(frozen=True)
class JobConfig:
    """Everything that decides the bytes of the output. Fingerprinted into the plan: a rerun into
    the same OUT with any other value is refused, naming the keys (`plan.differences`). So a speed
    option that changes the images (`cache_interval`) belongs here, not in `RuntimeConfig`."""

    condition: str = setting("hed", help="seg, hed or scribble.")
    condition_style: str = setting("diffss", help="diffss (as the paper) or upstream.")
    num_aux: int = setting(4, help="Auxiliary images per support sample.")
    seed: int = setting(0, help="Job seed; each image's seed derives from it.")
    resolution: int = setting(DEFAULT_RESOLUTION, help="Working short side (multiple of 64).")
    detect_resolution: int = setting(
        DEFAULT_RESOLUTION, help="Short side HED runs at (hed, scribble); DifFSS: 512."
    )
    # `model` may name a folder made by `difaug models make-tiny` (a bundle of all weights);
    # base_model / controlnet / hed_weights override single parts.
    model: str = setting("", help="Model bundle: a folder made by `difaug models make-tiny`.")
    base_model: str = setting(DEFAULT_BASE_MODEL, help="SD1.5 hub id or diffusers folder.")
    controlnet: str = setting("", help="ControlNet hub id or folder (default: per condition).")
    hed_weights: str = setting(
        DEFAULT_HED_WEIGHTS, help="HED weights: hub repo, folder or ControlNetHED.pth."
    )
    scheduler: str = setting("unipc", help=", ".join(SCHEDULERS) + ".")
    steps: int = setting(20, help="Denoising steps.")
    guidance_scale: float = setting(9.0, help="Classifier-free guidance scale.")
    controlnet_scale: float = setting(1.0, help="ControlNet conditioning scale.")
    prompt_template: str = setting(DEFAULT_PROMPT, help="Prompt with {class_name}.")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, help="Negative prompt.")
    lcm_lora: str = setting("", help="LCM-LoRA id or folder (4-8 steps).")
    image_format: str = setting("png", help="png or jpeg for the aux images.")
    jpeg_quality: int = setting(95, help="JPEG quality (image-format jpeg).")
    shard_size: int = setting(64, help="Manifest rows per shard (one Dask task each).")
    # "none" leaves the drift columns null; `difaug score` fills them later.
    score: str = setting("diffseg", help="diffseg (DiffSeg drift scores in the shards) or none.")
    # Regeneration (difaug.run.stages): 0 / 1 = off, and the shards are what they are without it.
    min_drift_iou: float = setting(
        0.0, help="Regenerate an image whose drift_iou is below this (0 = off; needs score diffseg)."
    )
    max_attempts: int = setting(1, help="Images generated at most per kept image (1 = no regeneration).")
    # A speed option that changes the images, so it is fingerprinted.
    cache_interval: int = setting(
        1, help="DeepCache: deep UNet features every k-th step (1 = off; changes images)."
    )
    # Filled in by resolve_job (difaug.core.presets): the keys it sets are resolved, this records the name.
    preset: str = setting("", help="Named settings to start from: diffss-reference (DDIM, 2 steps).")

    def validate(self) -> JobConfig:
        """Every value this config holds, checked before any plan is written or model loaded."""
        _choice("condition", self.condition, CONDITIONS)
        _choice("condition_style", self.condition_style, CONDITION_STYLES)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("image_format", self.image_format, ("png", "jpeg"))
        _choice("score", self.score, SCORES)
        for name in ("num_aux", "steps", "shard_size", "resolution", "detect_resolution"):
            _int_at_least(name, getattr(self, name), 1)
        if self.num_aux > MAX_NUM_AUX:
            raise ConfigError(
                f"num_aux={self.num_aux} is more than {MAX_NUM_AUX} aux images per support; DifFSS uses "
                "a few (1-10). Set --num-aux to at most that"
            )
        if self.resolution % 64:
            raise ConfigError(f"resolution must be a multiple of 64, got {self.resolution}")
        _int_at_least("jpeg_quality", self.jpeg_quality, 1)
        _int_at_least("cache_interval", self.cache_interval, 1)
        if self.jpeg_quality > 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        for name in ("guidance_scale", "controlnet_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        check_prompt_template(self.prompt_template)
        t = self.min_drift_iou
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            raise ConfigError(f"min_drift_iou must be a number in [0, 1] (0 = off), got {t!r}")
        _int_at_least("max_attempts", self.max_attempts, 1)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        return self

    def check_regeneration(self) -> JobConfig:
        """The regeneration settings together (`validate` checks each alone; a YAML may set them
        apart from `score`): called by the driver before the plan."""
        t, k = self.min_drift_iou, self.max_attempts
        if t > 0 and self.score != "diffseg":
            raise ConfigError(
                f"min_drift_iou={t} needs the drift scores during generation: set score to diffseg "
                "(or min_drift_iou to 0)"
            )
        if k > 1 and t <= 0:
            raise ConfigError(
                f"max_attempts={k} regenerates only images below --min-drift-iou: set min_drift_iou "
                "in (0, 1] (pick it from a first run's drift histogram, `difaug inspect`) or max_attempts to 1"
            )
        return self

    @property
    def controlnet_id(self) -> str:
        return self.controlnet or DEFAULT_CONTROLNETS[self.condition]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RuntimeConfig:
    """How the job runs; free to change between a run and its resume."""

    cluster: str = setting("local", help="sync, local, cuda or slurm.")
    scheduler_address: str = setting("", help="Use a running Dask scheduler, e.g. tcp://host:8786.")
    workers: int = setting(1, help="Worker processes (local, slurm; cuda: one per GPU).")
    threads_per_worker: int = setting(1, help="Torch CPU threads per worker.")
    retries: int = setting(2, help="Retries of a failed shard task.")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 …", models=True)
    dtype: str = setting("auto", help="auto, float32, float16, bfloat16.", models=True)
    # Also what the shard task's queues and prepare chunk are sized from, and (a compiled pipeline
    # pads to it) part of the model-cache key.
    batch_size: int = setting(8, help="Images per generator call.", models=True)
    hed_batch: int = setting(
        0, help="Images per HED forward pass (hed, scribble; 0 = --batch-size).", models=True
    )
    compile: bool | str = setting(
        "auto",
        help="torch.compile UNet, ControlNet, VAE decoder (default auto: CUDA jobs of >= --compile-min-images).",
        models=True,
    )
    compile_mode: str = setting(
        "default", help="default, reduce-overhead (CUDA graphs) or max-autotune.", models=True
    )
    offload: bool = setting(False, help="CPU offload (small GPUs).", models=True)
    progress: bool = setting(True, help="Show the progress bar.")
    # One SLURM worker job per --workers (`difaug.run.cluster`); the YAML's `slurm:` section sets the
    # same keys without the prefix (`SLURM_KEYS`). The defaults fit a small node.
    slurm_partition: str = setting("", help="SLURM partition of the worker jobs (default: the cluster's).")
    slurm_cores: int = setting(2, help="CPU cores per SLURM worker job.")
    slurm_memory: str = setting("8GB", help="Memory per SLURM worker job, e.g. 8GB, 500MB.")
    slurm_walltime: str = setting("04:00:00", help="Time limit per SLURM worker job (they are replaced).")
    slurm_gpus: int = setting(0, help="GPUs per SLURM worker job (--gres=gpu:N).")
    slurm_account: str = setting("", help="SLURM account charged for the worker jobs.")
    slurm_extra: str = setting("", help="Extra #SBATCH options of the worker jobs, separated by ';'.")
    # Bounds every wait for a worker: the first one, and a replacement once none is left.
    worker_wait: int = setting(
        600, help="Seconds to wait for a worker to join (SLURM queue, --scheduler-address) before giving up."
    )
    # Size guards applied by validation (`difaug.inputs.manifest.SizeLimits`): a failed row, never
    # a run that eats the machine's memory.
    max_side: int = setting(
        DEFAULT_MAX_SIDE, help="Refuse rows whose working size has a longer side (px; default 8192)."
    )
    max_aspect: float = setting(
        DEFAULT_MAX_ASPECT, help="Refuse rows whose image is more elongated (long:short; default 16)."
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, help="Refuse rows whose image has more pixels (default 150 M)."
    )
    # Shorter jobs stay eager under compile "auto": the warm-up would not be repaid.
    compile_min_images: int = setting(
        DEFAULT_COMPILE_MIN_IMAGES, help="compile auto: compile jobs of at least this many images."
    )
    # Shared by workers and reruns; "" = OUT/.difaug-compile-cache (the driver fills it in).
    compile_cache_dir: str = setting(
        "",
        help="Compile cache folder (default OUT/.difaug-compile-cache).",
        flag="--compile-cache",
        models=True,
    )
    vae_batch: int = setting(DEFAULT_VAE_BATCH, help="Latents per VAE decode call.", models=True)
    encode_threads: int = setting(
        0, help="PNG/JPEG encoder threads per shard task, two in flight per worker (0 = from the cores)."
    )
    prepare_threads: int = setting(0, help="Decode threads of the condition stage (0 = from the cores).")

    def validate(self) -> RuntimeConfig:
        """Every value this config holds, checked before any plan is written or worker started."""
        _choice("cluster", self.cluster, CLUSTERS)
        _choice("dtype", self.dtype, DTYPES)
        dtype_name(self.dtype)
        check_device_name(self.device)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_compile_offload(compile_setting(self.compile) == "on", self.offload)
        for name in ("workers", "threads_per_worker", "batch_size", "max_side", "max_pixels"):
            _int_at_least(name, getattr(self, name), 1)
        _int_at_least("retries", self.retries, 0)
        _int_at_least("vae_batch", self.vae_batch, 1)
        for name in ("compile_min_images", "encode_threads", "prepare_threads", "hed_batch"):
            _int_at_least(name, getattr(self, name), 0)
        if (
            isinstance(self.max_aspect, bool)
            or not isinstance(self.max_aspect, int | float)
            or not (math.isfinite(self.max_aspect) and self.max_aspect >= 1)
        ):
            raise ConfigError(f"max_aspect must be a number >= 1, got {self.max_aspect!r}")
        _check_slurm(self)
        return self

    @property
    def hed_batch_size(self) -> int:
        """Images per HED forward pass: `hed_batch`, or `batch_size` when it is 0."""
        return self.hed_batch or self.batch_size


@dataclass(frozen=True)
class Job:
    """A whole job: inputs, outputs and both halves of the configuration."""

    manifest: str
    out: str
    config: JobConfig = field(default_factory=JobConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    overwrite: bool = False
    limit: int = 0  # generate for the first N rows only (0 = all); part of the plan


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not one of: {', '.join(allowed)}; set --{name.replace('_', '-')} "
            f"(or `{name}:` in the config file) to one of them"
        )


# Spellings of a dtype accepted on top of DTYPES: the short names torch users type.
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(device: str) -> None:
    """Refuse a device string of the wrong form (without importing torch; `difaug.core.device` resolves it)."""
    if not _DEVICE_NAME.match(device or "auto"):
        raise ConfigError(f"device={device!r} is not a device; use auto, cpu, cuda or cuda:N")


def dtype_name(dtype: str) -> str:
    """`dtype` spelled canonically (`float32`, `float16`, `bfloat16`, or `auto`), or ConfigError."""
    name = str(dtype or "auto").lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of: {', '.join(DTYPES)}")
    return name


def compile_setting(setting: bool | str) -> str:
    """`compile:` as one of COMPILE_SETTINGS ("auto", "on", "off"); booleans and yes/no spellings
    are accepted, anything else is a ConfigError."""
    if isinstance(setting, bool):
        return "on" if setting else "off"
    value = str(setting).strip().lower()
    aliases = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
    value = aliases.get(value, value)
    if value not in COMPILE_SETTINGS:
        raise ConfigError(f"compile={setting!r} is not one of: auto, on, off (or true/false)")
    return value


def check_compile_offload(compile: bool, offload: bool) -> None:
    """Refuse torch.compile together with CPU offload: offload's hooks move the networks between
    devices on every call, which a compiled graph does not follow."""
    if compile and offload:
        raise ConfigError("compile and offload cannot be combined; choose one (--no-compile or --no-offload)")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def check_prompt_template(template: str) -> None:
    """Refuse a template that `str.format(class_name=…)` cannot fill: an unknown placeholder
    (`{style}`), positional `{}`, an attribute or index (`{class_name.x}`), unbalanced braces, or no
    `{class_name}` at all. Literal braces are written `{{` and `}}`."""
    if not isinstance(template, str):
        raise ConfigError(f"prompt_template must be text, got {template!r}")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(
            f"prompt_template {template!r} is not a valid template ({e}); write literal braces as {{{{ and }}}}"
        ) from None
    bad = [n for n in names if n not in PROMPT_FIELDS]
    if bad:
        raise ConfigError(
            f"prompt_template {template!r} has placeholder(s) {', '.join('{' + n + '}' for n in bad)}; "
            f"only {{class_name}} is filled in (write literal braces as {{{{ and }}}})"
        )
    if "class_name" not in names:
        raise ConfigError(f"prompt_template {template!r} must contain {{class_name}}")


_JOB_KEYS = {f.name for f in fields(JobConfig)}
_RUNTIME_KEYS = {f.name for f in fields(RuntimeConfig)}
SLURM_KEYS = tuple(k.removeprefix("slurm_") for k in sorted(_RUNTIME_KEYS) if k.startswith("slurm_"))


def slurm_section(section: Any, path: Path) -> dict[str, Any]:
    """A YAML `slurm:` section as the runtime keys it sets (`partition` → `slurm_partition`); a list
    of `extra` options is joined with ';' as the flag takes them."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `slurm:` must be a mapping of {', '.join(SLURM_KEYS)}")
    unknown = sorted(set(map(str, section)) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown slurm key(s) {', '.join(unknown)}; valid keys: {', '.join(SLURM_KEYS)}"
        )
    extra = section.get("extra")
    if isinstance(extra, list):
        section = {**section, "extra": "; ".join(map(str, extra))}
    return {f"slurm_{k}": v for k, v in section.items()}


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_SLURM_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B?)?$", re.IGNORECASE)


def _check_slurm(rt: RuntimeConfig) -> None:
    """The SLURM settings' forms (whether the cluster can satisfy them is `sbatch --test-only`'s)."""
    _int_at_least("slurm_cores", rt.slurm_cores, 1)
    _int_at_least("slurm_gpus", rt.slurm_gpus, 0)
    _int_at_least("worker_wait", rt.worker_wait, 1)
    for name in ("slurm_partition", "slurm_memory", "slurm_walltime", "slurm_account", "slurm_extra"):
        if not isinstance(getattr(rt, name), str):
            raise ConfigError(f"{name} must be a string, got {getattr(rt, name)!r}")
    if not _SLURM_MEMORY.match(rt.slurm_memory):
        raise ConfigError(f"slurm_memory must be a size such as 8GB or 500MB, got {rt.slurm_memory!r}")
    if not _SLURM_TIME.match(rt.slurm_walltime):
        raise ConfigError(
            f"slurm_walltime must be a SLURM time such as 04:00:00 or 1-00:00:00, got {rt.slurm_walltime!r}"
        )


_TOP_KEYS = {"manifest", "out", "overwrite", "limit"}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML job file into a flat dict of known keys (an `execution:` section is flattened)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {kind}: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a config file is YAML text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the file there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    flat = dict(data)
    execution = flat.pop("execution", None) or {}
    if not isinstance(execution, dict):
        raise ConfigError(
            f"{path}:{_key_line(path, 'execution')}: `execution:` must be a mapping of keys to values "
            f"(cluster:, workers:, …), got {execution!r}"
        )
    flat.update(execution)
    flat.update(slurm_section(flat.pop("slurm", None) or {}, path))
    unknown = sorted(set(flat) - _JOB_KEYS - _RUNTIME_KEYS - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known keys: "
            f"{', '.join(sorted(_JOB_KEYS | _RUNTIME_KEYS | _TOP_KEYS))}"
        )
    return flat


def _key_line(path: Path, key: str) -> int:
    """The line of `key:` at the top level of a YAML file (1 when not found): for messages."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return 1


MODEL_PATH_KEYS = ("model", "base_model", "controlnet", "hed_weights")


def absolute_model_refs(values: dict[str, Any]) -> dict[str, Any]:
    """Model references as the plan stores them: a local folder or file → its absolute path, so a
    resume from another working directory loads the same model (or is refused as another job); a
    hub id or URL (nothing of that name here) stays as written."""
    out = dict(values)
    for key in MODEL_PATH_KEYS:
        ref = out.get(key)
        if isinstance(ref, str) and ref and "://" not in ref and Path(ref).expanduser().exists():
            out[key] = str(Path(ref).expanduser().resolve())
    return out


def resolve_job(config_file: str | Path | None = None, **overrides: Any) -> Job:
    """Defaults < YAML file < `overrides` (CLI flags; `None` means "not given")."""
    values: dict[str, Any] = load_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - _JOB_KEYS - _RUNTIME_KEYS - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values = apply_preset(values)  # defaults < preset < YAML < flags
    if not values.get("manifest"):
        raise ConfigError("no manifest given: pass --manifest FILE or set `manifest:` in the config file")
    if not values.get("out"):
        raise ConfigError("no output folder given: pass --out DIR or set `out:` in the config file")
    limit = values.get("limit") or 0
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be an integer >= 0 (0 = every row), got {limit!r}; set --limit N")
    values = absolute_model_refs(values)
    job_cfg = JobConfig(**{k: v for k, v in values.items() if k in _JOB_KEYS}).validate()
    runtime = RuntimeConfig(**{k: v for k, v in values.items() if k in _RUNTIME_KEYS}).validate()
    return Job(
        manifest=str(values["manifest"]),
        out=str(values["out"]),
        config=job_cfg,
        runtime=runtime,
        overwrite=bool(values.get("overwrite", False)),
        limit=int(values.get("limit", 0) or 0),
    )
