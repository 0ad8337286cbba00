"""The driver's half of the compile settings, which needs the plan (`decide_compile`, the worker's
half, is `difaug.diffusion.speed`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from difaug.core.config import RuntimeConfig, compile_setting
from difaug.diffusion.speed import COMPILE_CACHE_DIRNAME


def runtime_for_plan(runtime: RuntimeConfig, out: str, planned_images: int) -> RuntimeConfig:
    """`compile: auto` for a job shorter than `compile_min_images` becomes "off" (the warm-up
    would not be repaid), and the compile cache folder defaults to `OUT/.difaug-compile-cache`
    (shared by the workers of this run and by its reruns)."""
    changes: dict[str, object] = {}
    if compile_setting(runtime.compile) == "auto" and planned_images < runtime.compile_min_images:
        changes["compile"] = "off"
    if not runtime.compile_cache_dir:
        changes["compile_cache_dir"] = str(Path(out) / COMPILE_CACHE_DIRNAME)
    return replace(runtime, **changes) if changes else runtime  # type: ignore[arg-type]
