"""Helpers for the runner tests: the shared support sets and jobs (from `difaug.testing.standins`, which
benchmarks import too) and shard comparison."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from difaug.run import shards
from difaug.run.layout import SHARDS_DIR, shard_path
from difaug.run.records import ShardStats
from difaug.run.verify import verify_run
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
    return {p.name: p.read_bytes() for p in sorted((out / SHARDS_DIR).glob("*.parquet"))}


def verified_shards(out: str | Path) -> list[Path]:
    """The files of the shards that verify (`difaug.run.verify.verify_run`), in index order; none
    without a plan."""
    try:
        return [shard_path(out, c.shard.index) for c in verify_run(out).done]
    except FileNotFoundError:
        return []


def verified_stats(out: str | Path) -> list[ShardStats]:
    """The markers of the shards that verify, in index order."""
    return [c.stats for c in verify_run(out).done if c.stats is not None]


def all_keys(out: Path) -> list[str]:
    return [k for p in verified_shards(out) for k in shards.read_shard(p, ["key"]).column("key").to_pylist()]


def aux_images(out: Path) -> dict[str, bytes]:
    """key → encoded aux image, over all finished shards."""
    res = {}
    for p in verified_shards(out):
        t = shards.read_shard(p, ["key", "aux_image"]).to_pylist()
        res.update({r["key"]: r["aux_image"]["bytes"] for r in t})
    return res


def write_job_file(folder: Path, manifest: Path, keys: str) -> Path:
    """`folder/job.yaml`: a job file for `manifest` with the YAML `keys` after it."""
    path = folder / "job.yaml"
    path.write_text(f"manifest: {manifest}\n{keys}", encoding="utf-8")
    return path
