"""The driver's compile policy: a short job's `compile: auto` is off, the cache goes under OUT."""

from __future__ import annotations

from pathlib import Path

from difaug.core.config import RuntimeConfig
from difaug.diffusion.speed import COMPILE_CACHE_DIRNAME
from difaug.run.compile_policy import runtime_for_plan


def test_runtime_for_plan(tmp_path: Path) -> None:
    rt = RuntimeConfig(compile="auto", compile_min_images=100)
    short = runtime_for_plan(rt, str(tmp_path), 99)
    assert short.compile == "off" and short.compile_cache_dir == str(tmp_path / COMPILE_CACHE_DIRNAME)
    long = runtime_for_plan(rt, str(tmp_path), 100)
    assert long.compile == "auto"
    mine = runtime_for_plan(RuntimeConfig(compile=True, compile_cache_dir="/shared/cache"), str(tmp_path), 1)
    assert mine.compile is True and mine.compile_cache_dir == "/shared/cache"
