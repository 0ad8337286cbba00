"""DeepCache-style feature caching for the SD UNet + ControlNet (opt-in: `cache_interval` k > 1).

Adjacent denoising steps change the UNet's deep, low-resolution features very little (Ma et al.,
"DeepCache", 2023). Every k-th step runs in full and remembers the outputs of the deep blocks; in
the k-1 steps between, only the shallow branch runs — `conv_in`, the first down block and the
last up block, at full resolution — and the deep blocks hand back what they remembered. The
ControlNet's residuals are remembered the same way (its own encoder is as deep as the UNet's),
so a cached step costs roughly the shallow branch alone.

This is done without copying diffusers' UNet or denoising loop: the deep blocks' own `forward`
is wrapped on the instance (`module.forward`), so diffusers' unmodified `UNet2DConditionModel.
forward` and `StableDiffusionControlNetPipeline.__call__` run as they are. The output changes
(the reused features are up to k-1 steps old); `benchmarks/gpu_e2e.py --tiny` prints the mean and
max |Δ| against the default on the same seeds. It is part of the `JobConfig` (it changes the
images) and is not combined with `torch.compile` (the compiled graph would bake in one branch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FeatureCache:
    """The step counter and the remembered outputs of one pipeline call.

    `begin_call()` before each pipeline call; the UNet's wrapped forward advances the step. Step
    s runs in full when s % interval == 0, else it reuses the features of the last full step."""

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"cache_interval must be >= 1, got {interval}")
        self.interval = interval
        self.step = 0
        self.full_steps = 0
        self._saved: dict[int, Any] = {}

    def begin_call(self) -> None:
        self.step = 0
        self._saved.clear()

    @property
    def reuse(self) -> bool:
        return self.step % self.interval != 0 and bool(self._saved)

    def wrap(self, module: Any) -> None:
        """Replace `module.forward` (on the instance) by: compute and remember on a full step,
        hand back the remembered output on a cached one."""
        original: Callable[..., Any] = module.forward
        key = id(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.reuse and key in self._saved:
                out = self._saved[key]
            else:
                out = original(*args, **kwargs)
                self._saved[key] = out
            return out

        module.forward = forward


def install_feature_cache(pipe: Any, interval: int) -> FeatureCache | None:
    """Wrap the deep blocks of `pipe.unet` and the whole of `pipe.controlnet`; `None` for k = 1.

    Deep = every down block but the first, the mid block, every up block but the last: the last
    up block then receives the remembered input and the fresh skip connections of `conv_in` and
    the first down block (plus the ControlNet residuals added to them)."""
    if interval < 1:
        from difaug.core.config import ConfigError

        raise ConfigError(f"cache_interval must be >= 1 (1 = off), got {interval}")
    if interval == 1:
        return None
    existing = getattr(pipe, "_difaug_feature_cache", None)
    if existing is not None:  # a second generator on the same pipeline shares its wrappers
        if existing.interval != interval:
            raise ValueError(f"this pipeline already caches every {existing.interval} steps, not {interval}")
        return existing
    unet = pipe.unet
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        raise ValueError("cache_interval needs a UNet with at least two down and two up blocks")
    cache = FeatureCache(interval)
    for block in [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]:
        if block is not None:
            cache.wrap(block)
    cache.wrap(pipe.controlnet)
    # The UNet's own forward runs every step (the shallow branch); it only counts the steps.
    original = unet.forward

    def unet_forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            cache.full_steps += not cache.reuse
            cache.step += 1

    unet.forward = unet_forward
    pipe._difaug_feature_cache = cache
    return cache
