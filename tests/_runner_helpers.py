"""Helpers for the runner tests: the shared support sets and jobs (from `difaug.testing.standins`, which
benchmarks import too) and shard comparison."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from difaug.run import shards
from difaug.testing.standins import (  # noqa: F401  (re-exported for the tests)
    CLASSES,
    make_bench_set,
    make_dataset,
    make_sample,
    sleep_generator_factory,
    write_csv,
)
from difaug.testing.standins import small_job as job  # noqa: F401


def sleep_factory(ms: float = 1.0) -> Any:
    return functools.partial(sleep_generator_factory, ms_per_image=ms)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / shards.SHARDS_DIR).glob("*.parquet"))}


def all_keys(out: Path) -> list[str]:
    return [
        k
        for p in shards.iter_shard_paths(out)
        for k in shards.read_shard(p, ["key"]).column("key").to_pylist()
    ]


def aux_images(out: Path) -> dict[str, bytes]:
    """key → encoded aux image, over all finished shards."""
    res = {}
    for p in shards.iter_shard_paths(out):
        t = shards.read_shard(p, ["key", "aux_image"]).to_pylist()
        res.update({r["key"]: r["aux_image"]["bytes"] for r in t})
    return res
