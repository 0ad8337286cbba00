"""Helpers for the runner tests and benchmarks: a synthetic support set, jobs, shard comparison."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from difaug import shards
from difaug.config import Job, JobConfig, RuntimeConfig
from difaug.worker import sleep_generator_factory

CLASSES = ((1, "aeroplane"), (8, "cat"), (12, "dog"), (15, "person"))


def make_sample(folder: Path, i: int, size: tuple[int, int] = (96, 64)) -> dict[str, Any]:
    """One support image (smooth colours, so it encodes like a photo) and a palette mask whose
    class is a blob in the middle; returns its manifest row."""
    w, h = size
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    img = (base + 80 * np.sin(xx[..., None] / (7 + i % 5) + yy[..., None] / 11 + np.arange(3))).clip(0, 255)
    class_id, class_name = CLASSES[i % len(CLASSES)]
    mask = np.zeros((h, w), np.uint8)
    cy, cx, r = h // 2, w // 2, min(w, h) // 3
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    mask[inside] = class_id
    mask[inside & ((yy - cy) ** 2 + (xx - cx) ** 2 >= (r - 2) ** 2)] = 255  # VOC-style border
    stem = f"img{i:05d}"
    Image.fromarray(img.astype(np.uint8)).save(folder / f"{stem}.jpg", quality=92)
    m = Image.fromarray(mask, mode="P")
    m.putpalette([0, 0, 0, 128, 0, 0] * 128)
    m.save(folder / f"{stem}.png")
    return {"image": f"{stem}.jpg", "mask": f"{stem}.png", "class_id": class_id, "class_name": class_name}


def make_dataset(
    folder: Path, n: int, size: tuple[int, int] = (96, 64), sizes: list[tuple[int, int]] | None = None
) -> Path:
    """`n` samples and `folder/manifest.csv`; `sizes` (cycled) gives several aspect ratios."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [make_sample(folder, i, sizes[i % len(sizes)] if sizes else size) for i in range(n)]
    return write_csv(folder / "manifest.csv", rows)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols = ["image", "mask", "class_id", "class_name", "sample_id"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in cols})
    return path


def job(
    manifest: Path,
    out: Path,
    *,
    runtime: dict | None = None,
    limit: int = 0,
    overwrite: bool = False,
    **cfg: Any,
) -> Job:
    """A small test job: seg, 2 aux images, 64 px working size, shards of 2, sync, no progress bar."""
    settings = {"condition": "seg", "num_aux": 2, "resolution": 64, "shard_size": 2, "steps": 2} | cfg
    # HED at the small working size too: tests stay fast (DifFSS's 512 is the default).
    settings.setdefault("detect_resolution", settings["resolution"])
    rt = {"cluster": "sync", "workers": 1, "batch_size": 4, "progress": False, "retries": 1} | (runtime or {})
    return Job(
        manifest=str(manifest),
        out=str(out),
        config=JobConfig(**settings).validate(),
        runtime=RuntimeConfig(**rt).validate(),
        limit=limit,
        overwrite=overwrite,
    )


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


DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo"


def make_bench_set(folder: Path, n: int, size: int = 512) -> Path:
    """`n` manifest rows over the demo photos resized to `size`² (a handful of real files, repeated
    under distinct sample ids), or synthetic samples when the demo set is absent."""
    from difaug.imageio import load_image, load_mask, resize
    from difaug.manifest import read_manifest

    folder.mkdir(parents=True, exist_ok=True)
    demo = DEMO / "manifest.csv"
    base: list[dict[str, Any]] = []
    if demo.is_file():
        for s in read_manifest(demo).samples:
            stem = Path(s.image).stem
            Image.fromarray(resize(load_image(s.image), (size, size))).save(
                folder / f"{stem}.jpg", quality=90
            )
            mask = Image.fromarray(resize(load_mask(s.mask).astype(np.uint8), (size, size), nearest=True))
            mask.save(folder / f"{stem}.png")
            base.append({"image": f"{stem}.jpg", "mask": f"{stem}.png", "class_id": s.class_id,
                         "class_name": s.class_name, "stem": stem})  # fmt: skip
    else:
        for i in range(6):
            row = make_sample(folder, i, (size, size))
            base.append(row | {"stem": Path(row["image"]).stem})
    rows = [base[i % len(base)] | {"sample_id": f"{base[i % len(base)]['stem']}_{i}"} for i in range(n)]
    return write_csv(folder / "manifest.csv", rows)
