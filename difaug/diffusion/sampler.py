"""Batched, deterministic Stable Diffusion 1.5 + ControlNet sampling.

A worker builds one `AuxGenerator` (models loaded once) and feeds it `WorkItem`s: one per
auxiliary image, i.e. (sample, condition image, aux index) with its seed and prompts. The
generator

- buckets items by condition shape and packs items of *different* samples into batches of
  `batch_size` (one pipeline call per batch, not per sample);
- gives every image its own CPU `torch.Generator` seeded from (job seed, sample_id, aux_index,
  attempt) by a stable hash (`derive_seed`), so an image does not depend on batch size, order,
  worker or retry.
  CPU generators (not CUDA ones) make the initial noise identical on every device, so a GPU run
  matches a CPU run within floating-point tolerance; drawing 4×64×64 numbers on the CPU is free;
- encodes each distinct prompt (and the negative prompt) once and keeps the embeddings;
- returns `H×W×3 uint8` images quantised exactly as diffusers' `numpy_to_pil` does, resized back
  to each support image's own width × height.

Equivalence with plain diffusers (the core guarantee, tested on CPU with the tiny model): an image
from a mixed batch equals a one-image `StableDiffusionControlNetPipeline` call with the same seed
(`torch.Generator().manual_seed(seed)`), prompt, scheduler and settings, within floating-point
tolerance (batched vs single matrix kernels differ in summation order: ~1e-6, ≤ 1 uint8 level).

Presets (`difaug.core.presets`): `diffss-reference` samples as the DifFSS reference code does
(DDIM 2 steps, eta 0, guidance 9, ControlNet scale 1, SD1.5's DDIM config: timesteps 501, 1);
`apply_preset_scheduler` pins that config on the pipeline.

Speed options (fp16, fused QKV, batched VAE decode, batch size, compile, cache_interval,
lcm_lora, offload): see the README's "Speed options" section.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from difaug.core.config import ConfigError, JobConfig, RuntimeConfig
from difaug.diffusion.contracts import AuxResult, WorkItem
from difaug.inputs.manifest import Sample

if TYPE_CHECKING:
    import torch

    from difaug.diffusion.specs import ModelSpec

logger = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 1024  # distinct prompts kept (≈120 kB each in fp16 for SD1.5)

# What diffusers' `encode_prompt` and transformers' tokenizer log for a prompt over CLIP's 77 tokens:
# each quotes the whole cut text (5000+ characters for a long class name). `AuxGenerator` counts
# such prompts itself and reports them through `warnings`, so these lines are dropped.
_CUT_PROMPT_LOGS = (
    ("diffusers.pipelines.controlnet.pipeline_controlnet", "The following part of your input was truncated"),
    ("transformers.tokenization_utils_base", "Token indices sequence length is longer"),
)


class _DropCutPromptLog(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_CUT_PROMPT_FILTERS = {name: _DropCutPromptLog(prefix) for name, prefix in _CUT_PROMPT_LOGS}


def _silence_cut_prompt_logs(pipe: Any) -> None:
    """Install the filters (once per logger: `addFilter` keeps one copy) on the two loggers above
    and on the logger of the module that defines this pipeline's `encode_prompt`."""
    for name, f in _CUT_PROMPT_FILTERS.items():
        logging.getLogger(name).addFilter(f)
    encode_prompt = getattr(type(pipe), "encode_prompt", None)
    module = getattr(encode_prompt, "__module__", None)
    if module and module.startswith("diffusers."):
        logging.getLogger(module).addFilter(_CUT_PROMPT_FILTERS[_CUT_PROMPT_LOGS[0][0]])


CUT_PROMPT_PREFIX = "prompt cut to "


def cut_prompt_warning(limit: int, prompt: str) -> str:
    """The `AuxGenerator.warnings` entry of one prompt longer than the text encoder's `limit` tokens:
    a short quote and a digest, so the same prompt seen in several shards is counted once per run."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()
    quote = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return f"{CUT_PROMPT_PREFIX}{limit} tokens [{digest}]: {quote!r} ({len(prompt)} characters)"


def derive_seed(job_seed: int, sample_id: str, aux_index: int, attempt: int = 0) -> int:
    """A seed in [0, 2**63) from (job seed, sample id, aux index, attempt); the same in every
    process. Attempt 0 is the image's first seed (the one every run without regeneration stores);
    attempt n its n-th regeneration (`difaug.run.stages`: `min_drift_iou`)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    text = f"{job_seed}/{sample_id}/{aux_index}" + (f"/{attempt}" if attempt else "")
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def retry_item(item: WorkItem, job_seed: int, attempt: int) -> WorkItem:
    """`item` again with the seed of its `attempt`-th regeneration (all else the same)."""
    return replace(item, seed=derive_seed(job_seed, item.sample_id, item.aux_index, attempt))


def sample_prompt(sample: Sample, cfg: JobConfig) -> str:
    """The row's own prompt if it has one, else the template filled with the class name."""
    if sample.prompt:
        return sample.prompt
    try:
        return cfg.prompt_template.format(class_name=sample.class_name)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"prompt_template {cfg.prompt_template!r} cannot be filled ({exc}); "
            "the only placeholder is {class_name}, write literal braces as {{ }}"
        ) from exc


def make_work_items(
    sample: Sample, condition: np.ndarray, out_size: tuple[int, int], cfg: JobConfig
) -> list[WorkItem]:
    """The `cfg.num_aux` work items of one sample, aux_index 0..num_aux-1."""
    if condition.ndim != 3 or condition.shape[2] != 3 or condition.dtype != np.uint8:
        raise ValueError(
            f"sample {sample.sample_id!r} (row {sample.row}): the condition must be an H×W×3 uint8 "
            f"image, got shape {condition.shape} dtype {condition.dtype}"
        )
    w, h = (int(v) for v in out_size)
    if w < 1 or h < 1:
        raise ValueError(f"sample {sample.sample_id!r} (row {sample.row}): out_size {out_size} is empty")
    prompt = sample_prompt(sample, cfg)
    return [
        WorkItem(
            sample_id=sample.sample_id,
            aux_index=k,
            seed=derive_seed(cfg.seed, sample.sample_id, k),
            prompt=prompt,
            negative_prompt=cfg.negative_prompt,
            condition=condition,
            out_size=(w, h),
        )
        for k in range(cfg.num_aux)
    ]


def apply_preset_scheduler(pipe: Any, cfg: JobConfig) -> None:
    """Pin the scheduler settings of the job's preset (`difaug.core.presets.SCHEDULER_CONFIG`:
    `diffss-reference` = SD1.5's DDIM config whatever the base model ships), in place."""
    from difaug.core.presets import scheduler_config
    from difaug.diffusion.loading import make_scheduler

    pinned = scheduler_config(getattr(cfg, "preset", ""), cfg.scheduler)
    if pinned and not cfg.lcm_lora and getattr(pipe, "scheduler", None) is not None:
        base = make_scheduler(cfg.scheduler, pipe.scheduler.config)
        pipe.scheduler = type(base).from_config(base.config, **pinned)


def compile_skipped(cfg: JobConfig) -> str:
    """Why a generator of `cfg` runs eager even with compile on ('' = it compiles): the one rule,
    for `AuxGenerator.from_config` and for what `difaug models warmup` refuses."""
    if cfg.cache_interval > 1:
        return "cache_interval > 1 runs eager (the cached branch is data-dependent)"
    return ""


T = TypeVar("T")
Shape = tuple[int, ...]


class ShapeBuckets(Generic[T]):
    """Entries grouped by condition shape into batches of at most `batch_size`: the one place
    batches are formed, for the shard task (a stream, `difaug.run.stages`) and for `generate` (a list).

    `add` puts an entry in its shape's bucket and returns the bucket as a batch once it holds
    `batch_size` entries; `drain` returns the partial buckets left, in order of their first entry.
    So a batch holds consecutive entries of one shape, and which entries share a batch depends
    only on the entries' order and `batch_size`, never on timing."""

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._open: dict[Shape, list[T]] = {}

    def add(self, shape: Shape, entry: T) -> list[T] | None:
        bucket = self._open.setdefault(shape, [])
        bucket.append(entry)
        return self._open.pop(shape) if len(bucket) >= self.batch_size else None

    def drain(self) -> list[list[T]]:
        batches = list(self._open.values())
        self._open.clear()
        return batches


def _batch_plan(items: Sequence[WorkItem], batch_size: int) -> list[list[int]]:
    """Indices of `items` in `ShapeBuckets` batches, listed shape by shape (in order of the
    shape's first appearance), each shape's batches in input order."""
    buckets: ShapeBuckets[int] = ShapeBuckets(batch_size)
    shape_order: dict[Shape, int] = {}
    batches: list[list[int]] = []
    for i, item in enumerate(items):
        shape = tuple(item.condition.shape)
        shape_order.setdefault(shape, len(shape_order))
        full = buckets.add(shape, i)
        if full is not None:
            batches.append(full)
    batches += buckets.drain()
    return sorted(batches, key=lambda b: (shape_order[tuple(items[b[0]].condition.shape)], b[0]))


def group_batches(items: Sequence[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Items in batches of at most `batch_size` whose conditions all have one shape."""
    return [[items[i] for i in batch] for batch in _batch_plan(items, batch_size)]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] → uint8, exactly as diffusers' `numpy_to_pil` quantises."""
    return (images * 255).round().astype("uint8")


class AuxGenerator:
    """Loaded models + the batching, seeding and prompt cache around them: a
    `difaug.diffusion.contracts.Generator` that also reports its warm-up (`ReportsWarmup`). Not
    thread-safe: one generator per worker thread (the pipeline's scheduler holds per-call state)."""

    def __init__(
        self,
        pipe: Any,
        cfg: JobConfig,
        *,
        batch_size: int = 8,
        spec: ModelSpec | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        pad_batches: bool = False,
        compile_cache_dir: str = "",
    ) -> None:
        from difaug.diffusion.deepcache import install_feature_cache
        from difaug.diffusion.specs import ModelSpec
        from difaug.diffusion.speed import is_compiled

        self.pipe = pipe
        self.cfg = cfg
        self.batch_size = batch_size
        self.spec = spec or ModelSpec(controlnet=cfg.controlnet_id)
        self.device = device
        self.dtype = dtype
        # With torch.compile every new batch shape is a new graph: pad short batches.
        self.pad_batches = pad_batches or is_compiled(pipe)
        self.compile_cache_dir = compile_cache_dir
        # Seconds of the first call of each batch shape (compilation, when compiled) and what
        # went wrong with compilation: read by the worker into each shard's stats.
        self.warmup_seconds = 0.0
        self.warnings: list[str] = []
        self._warm_shapes: set[tuple[int, ...]] = set()
        self.feature_cache = install_feature_cache(pipe, cfg.cache_interval)
        apply_preset_scheduler(pipe, cfg)
        self._embeds: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Prompts found longer than the text encoder's limit: each warned about once (the LRU above
        # may drop and re-encode a prompt; this keeps it from being counted again).
        self.cut_prompts: set[str] = set()
        _silence_cut_prompt_logs(pipe)
        scheduler = "lcm" if cfg.lcm_lora else cfg.scheduler
        self.provenance: dict[str, Any] = {
            "base_model": self.spec.base,
            "controlnet_model": self.spec.controlnet,
            "scheduler": scheduler,
            "steps": cfg.steps,
            "guidance_scale": float(cfg.guidance_scale),
            "controlnet_scale": float(cfg.controlnet_scale),
            "dtype": dtype,
            "device": device,
        }

    @classmethod
    def from_config(cls, cfg: JobConfig, runtime: RuntimeConfig) -> AuxGenerator:
        """Resolve the model spec and load the pipeline once (see `difaug.diffusion.loading.load_pipeline`)."""
        from difaug.core.device import resolve_device, resolve_dtype
        from difaug.diffusion.loading import load_pipeline
        from difaug.diffusion.specs import ModelSpec
        from difaug.diffusion.speed import decide_compile

        spec = ModelSpec.from_config(cfg)
        device = resolve_device(runtime.device)
        dtype = resolve_dtype(runtime.dtype, device)
        # planned_images=None: the driver has already turned a short job's "auto" into "off".
        compile = decide_compile(
            runtime.compile, device, None, runtime.compile_min_images, offload=runtime.offload
        )
        notes = []
        skipped = compile_skipped(cfg) if compile else ""
        if skipped:
            compile = False
            notes.append(f"compile skipped: {skipped}")
        pipe = load_pipeline(
            spec,
            device=device,
            dtype=dtype,
            scheduler=cfg.scheduler,
            compile=compile,
            compile_mode=runtime.compile_mode,
            lcm_lora=cfg.lcm_lora,
            offload=runtime.offload,
            vae_batch=runtime.vae_batch,
            compile_cache_dir=runtime.compile_cache_dir,
        )
        gen = cls(
            pipe,
            cfg,
            batch_size=runtime.batch_size,
            spec=spec,
            device=device,
            dtype=dtype,
            pad_batches=compile,
            compile_cache_dir=runtime.compile_cache_dir,
        )
        gen.warnings.extend(notes)
        return gen

    # ---- prompts ---------------------------------------------------------------------------

    def encode(self, prompt: str) -> torch.Tensor:
        """`(1, 77, D)` text embeddings of `prompt`, computed once and cached (LRU)."""
        from difaug.diffusion.loading import encode_alone

        cached = self._embeds.get(prompt)
        if cached is not None:
            self._embeds.move_to_end(prompt)
            return cached
        self._check_length(prompt)
        # Encoded as the pipeline encodes a prompt or a negative prompt: embeddings match a plain call.
        embeds = encode_alone(self.pipe, prompt)
        self._embeds[prompt] = embeds
        if len(self._embeds) > PROMPT_CACHE_SIZE:
            self._embeds.popitem(last=False)
        return embeds

    def _check_length(self, prompt: str) -> None:
        """A prompt over the tokenizer's `model_max_length` (77 for CLIP) is cut by the pipeline:
        note it once in `warnings` (the shard's stats carry it). Tokenized to one token past the
        limit, which is all the check needs and makes the tokenizer log nothing."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        if tokenizer is None or not isinstance(limit, int) or prompt in self.cut_prompts:
            return
        ids = tokenizer(prompt, truncation=True, max_length=limit + 1).input_ids
        if len(ids) > limit:
            self.cut_prompts.add(prompt)
            self.warnings.append(cut_prompt_warning(limit, prompt))

    # ---- sampling --------------------------------------------------------------------------

    def _check_shape(self, items: Sequence[WorkItem]) -> tuple[int, int]:
        from difaug.diffusion.loading import size_multiple

        shape = items[0].condition.shape
        for item in items:
            if item.condition.shape != shape:
                raise ValueError(
                    f"one batch needs one condition shape: {items[0].key} has {shape}, "
                    f"{item.key} has {item.condition.shape}; use generate() or group_batches()"
                )
        h, w = shape[:2]
        multiple = size_multiple(self.pipe)
        if h % multiple or w % multiple:
            raise ValueError(
                f"{items[0].key}: condition size {w}×{h} is not a multiple of {multiple}, which this "
                f"model needs; conditions come at working_size() (multiples of 64)"
            )
        return h, w

    def sample(self, items: Sequence[WorkItem]) -> np.ndarray:
        """One pipeline call for `items` (one condition shape): float32 `B×H×W×3` in [0, 1]."""
        import torch

        from difaug.diffusion.speed import compiled_shapes_allowed

        self._check_shape(items)
        # uint8 → float32 / 255, the same arithmetic as diffusers' PIL path (pil_to_numpy).
        cond = torch.from_numpy(np.stack([it.condition for it in items])).permute(0, 3, 1, 2)
        cond = cond.to(torch.float32) / 255.0
        prompt_embeds = torch.cat([self.encode(it.prompt) for it in items])
        negative_embeds = torch.cat([self.encode(it.negative_prompt) for it in items])
        generators = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]
        if self.feature_cache is not None:
            self.feature_cache.begin_call()
        with compiled_shapes_allowed():
            images = self.pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                image=cond,
                num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance_scale,
                controlnet_conditioning_scale=self.cfg.controlnet_scale,
                generator=generators,
                output_type="np",
                return_dict=False,
            )[0]
        return np.asarray(images, dtype=np.float32)

    def _sample_warm(self, items: Sequence[WorkItem]) -> np.ndarray:
        """`sample`, timing the first call of each batch shape (where compilation happens). A
        compiled first call that fails falls back to the eager modules, with a warning kept in
        `self.warnings`, and is redone eagerly: a broken compiler never fails a shard."""
        from difaug.diffusion.speed import first_call_done, is_compiled, restore_eager

        shape = (len(items), *items[0].condition.shape)
        if shape in self._warm_shapes:
            return self.sample(items)
        t0 = time.perf_counter()
        try:
            images = self.sample(items)
        except Exception as exc:
            if not is_compiled(self.pipe):
                raise
            self.warnings.append(f"torch.compile failed, running eager: {type(exc).__name__}: {exc}"[:500])
            logger.warning("%s", self.warnings[-1])
            restore_eager(self.pipe)
            self.pad_batches = False
            images = self.sample(items)
        cache_dir = self.compile_cache_dir if is_compiled(self.pipe) else ""
        self.warmup_seconds += first_call_done(
            self._warm_shapes, shape, t0, cache_dir, lambda message: self.warnings.append(message[:500])
        )
        return images

    def run_batch(self, items: Sequence[WorkItem]) -> list[AuxResult]:
        """One pipeline call (one condition shape) → images resized back to each `out_size`."""
        from difaug.core.imageio import resize

        if not items:
            return []
        images = to_uint8(self._sample_warm(items))
        return [AuxResult(item, resize(img, item.out_size)) for item, img in zip(items, images, strict=True)]

    def generate(self, items: Sequence[WorkItem]) -> list[AuxResult]:
        """Any mix of items → results in the same order, via shape buckets of `batch_size`."""
        out: list[AuxResult | None] = [None] * len(items)
        for batch in _batch_plan(items, self.batch_size):
            chunk = [items[i] for i in batch]
            if self.pad_batches and len(chunk) < self.batch_size:
                # Copies of the last item fill the batch; their images are dropped.
                chunk += [chunk[-1]] * (self.batch_size - len(chunk))
            for i, result in zip(batch, self.run_batch(chunk), strict=False):
                out[i] = result
        return [r for r in out if r is not None]
