"""Stand-ins and fixtures for tests and benchmarks: importable by both, never used by a real job.

- `SleepGenerator` / `sleep_generator_factory`: a generator (`difaug.diffusion.contracts.Generator`) that
  sleeps like a GPU and returns deterministic, photo-like images, so the real shard task, runner
  and writers can be measured and tested around a model of known speed;
- `make_sample` / `make_dataset` / `make_bench_set` / `write_csv`: small support sets on disk
  (synthetic, or the demo photos resized) with their manifest;
- `small_job`: a small, fast `Job` (seg, 2 aux images, 64 px, sync cluster, no progress bar).

The tiny random *models* are `difaug.testing.tiny`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from difaug.core import imageio
from difaug.core.config import Job, JobConfig, RuntimeConfig
from difaug.core.geometry import DEFAULT_RESOLUTION
from difaug.diffusion.contracts import AuxResult

# ----------------------------------------------------------------------------- stand-in generator


class SleepGenerator:
    """A stand-in for the diffusion model: sleeps `ms_per_image` per image with the GIL released,
    as a GPU kernel would, and returns a deterministic image at `item.out_size`: the condition
    resized back and tinted by the seed, so it encodes like a real picture rather than flat colour.

    Used by tests and benchmarks to exercise the real runner around a model of known speed."""

    def __init__(self, ms_per_image: float = 125.0, batch_size: int = 8, device: str = "cpu"):
        self.ms_per_image = float(ms_per_image)
        self.batch_size = batch_size
        self.provenance = {
            "base_model": "sleep",
            "controlnet_model": "sleep",
            "scheduler": "none",
            "steps": 0,
            "guidance_scale": 0.0,
            "controlnet_scale": 0.0,
            "dtype": "uint8",
            "device": device,
        }
        self.calls = 0
        self._last_key: tuple | None = None
        self._last = np.zeros((1, 1, 3), np.uint8)

    def run_batch(self, items: Sequence[Any]) -> list[Any]:
        self.calls += 1
        t0 = time.perf_counter()
        images = [self._image(item) for item in items]
        # The batch takes T ms per image in all, output included, as a GPU call would.
        time.sleep(max(0.0, self.ms_per_image * len(items) / 1000.0 - (time.perf_counter() - t0)))
        return [AuxResult(item, img) for item, img in zip(items, images, strict=True)]

    def generate(self, items: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(items), self.batch_size):
            out.extend(self.run_batch(items[i : i + self.batch_size]))
        return out

    def _image(self, item: Any) -> np.ndarray:
        # Cheap per image (the stand-in must not add host work of its own): the resized condition
        # is cached per sample, the photo-like texture per size; only the seed's tint is new.
        key = (id(item.condition), item.out_size)
        if self._last_key != key:
            w, h = item.out_size
            self._last = imageio.resize(item.condition, item.out_size) // 2 + _texture(w, h)
            self._last_key = key
        tint = np.frombuffer(hashlib.sha256(str(item.seed).encode()).digest()[:3], np.uint8) // 8
        return self._last + tint


@functools.lru_cache(maxsize=8)
def _texture(width: int, height: int) -> np.ndarray:
    """Deterministic smooth colour field + fine grain: compresses (PNG) about like a photo."""
    import cv2

    rng = np.random.default_rng(width * 100_003 + height)
    field = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 6)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6) * 64
    grain = rng.integers(0, 8, (height, width, 3))
    return (field + grain).astype(np.uint8)


def sleep_generator_factory(
    cfg: JobConfig, runtime: RuntimeConfig, ms_per_image: float = 125.0
) -> SleepGenerator:
    """Picklable factory for `SleepGenerator`: `functools.partial(sleep_generator_factory, ms_per_image=T)`."""
    return SleepGenerator(ms_per_image, runtime.batch_size)


# ----------------------------------------------------------------------------- small support sets

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


def small_job(
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


DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo"


def make_bench_set(folder: Path, n: int, size: int = DEFAULT_RESOLUTION) -> Path:
    """`n` manifest rows over the demo photos resized to `size`² (a handful of real files, repeated
    under distinct sample ids), or synthetic samples when the demo set is absent."""
    from difaug.core.imageio import load_image, load_mask, resize
    from difaug.inputs.manifest import read_manifest

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
