"""Write small but real run directories without the diffusion model, for adapter/report tests.

`make_run(root, specs)` writes real support images and masks, a real manifest (read back with
`read_manifest`), the real plan (`difaug.run.plan.build_plan`), real shards (`difaug.run.shards.write_shard`)
whose aux/condition images are real PNG (or JPEG) bytes of smooth synthetic pictures, and stats
markers with the runner's fields, including failures. Samples listed in `fail` get a failure
record instead of images; shards listed in `unfinished` get neither a shard file nor a marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from difaug.core.config import Job, JobConfig
from difaug.core.imageio import encode
from difaug.inputs.manifest import Sample, read_manifest, write_manifest
from difaug.run import layout, shards, verify
from difaug.run.plan import build_plan
from difaug.run.records import Failure, ShardStats

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SampleSpec:
    """One manifest row of a synthetic run. The image lands at `data/{parent}/{name}.jpg`."""

    name: str
    class_id: int
    class_name: str
    dataset: str = "pascal"
    size: tuple[int, int] = (48, 40)  # (w, h)
    parent: str = "JPEGImages"
    sample_id: str = ""  # "" → the manifest default `{name}_{class_id}`
    image: str = ""  # override the image path written into the manifest (relative to data/..)


PASCAL_SPECS = (
    SampleSpec("2007_000032", 1, "aeroplane", size=(48, 40)),
    SampleSpec("2007_000032", 15, "person", size=(48, 40)),
    SampleSpec("2007_000039", 20, "tvmonitor", size=(40, 56)),
    SampleSpec("2008_000123", 7, "car", size=(64, 32)),
    SampleSpec("2009_004567", 12, "dog", size=(36, 36)),
)

COCO_SPECS = (
    SampleSpec("COCO_train2014_000000000009", 51, "bowl", dataset="coco", parent="train2014"),
    SampleSpec("COCO_val2014_000000000042", 18, "dog", dataset="coco", parent="val2014", size=(40, 30)),
)


@dataclass
class SyntheticRun:
    run_dir: Path
    manifest: Path
    num_aux: int
    samples: list[Sample]  # manifest order
    aux: dict[str, list[np.ndarray]]  # sample_id → the exact pixels stored, by aux_index
    conditions: dict[str, np.ndarray]
    failures: list[dict] = field(default_factory=list)
    unfinished: tuple[int, ...] = ()

    def sample(self, sample_id: str) -> Sample:
        return next(s for s in self.samples if s.sample_id == sample_id)

    @property
    def done(self) -> list[Sample]:
        return [s for s in self.samples if s.sample_id in self.aux]


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth RGB picture (gradients and a soft disc): JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    a = 40 + (seed * 37) % 90
    cx, cy = width * (0.3 + 0.4 * ((seed * 7) % 5) / 4), height * 0.5
    disc = np.exp(-(((xx - cx) / (0.3 * width)) ** 2 + ((yy - cy) / (0.3 * height)) ** 2))
    r = a + 100 * xx / max(1, width - 1)
    g = 30 + 120 * yy / max(1, height - 1) + 60 * disc
    b = 200 - 80 * disc - 50 * xx / max(1, width - 1)
    return np.clip(np.stack([r, g, b], axis=2), 0, 255).round().astype(np.uint8)


def synthetic_mask(width: int, height: int, class_id: int, seed: int) -> np.ndarray:
    """class_id in a box, a 255 "ignore" outline around it, 0 elsewhere."""
    mask = np.zeros((height, width), dtype=np.uint8 if class_id < 256 else np.uint16)  # 16-bit: FSS ids
    x0, y0 = width // 4 + seed % 3, height // 4
    mask[y0 - 1 : height - height // 4 + 1, x0 - 1 : width - width // 4 + 1] = 255
    mask[y0 : height - height // 4, x0 : width - width // 4] = class_id
    return mask


def _row_dict(
    sample: Sample,
    k: int,
    aux: np.ndarray,
    cond: np.ndarray,
    cfg: JobConfig,
    drift_iou: float | None = None,
    corrupt: bool = False,
) -> dict:
    h, w = aux.shape[:2]
    return shards.make_row(
        sample,
        cfg,
        aux_index=k,
        seed=1000 * sample.row + k,
        prompt=cfg.prompt_template.format(class_name=sample.class_name),
        negative_prompt=cfg.negative_prompt,
        size=(w, h),
        condition_png=encode(cond, "png"),
        # `corrupt`: bytes that are no image (a damaged shard row), for the export's decode check.
        aux_bytes=b"not an image" if corrupt else encode(aux, cfg.image_format, cfg.jpeg_quality),
        scores=None if drift_iou is None else {"drift_iou": drift_iou, "drift_segments": 3},
        provenance={
            "base_model": "tiny/stable-diffusion-v1-5",
            "controlnet_model": "tiny/sd-controlnet-hed",
            "scheduler": cfg.scheduler,
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "controlnet_scale": cfg.controlnet_scale,
            "dtype": "float32",
            "device": "cpu",
        },
    )


def make_run(
    root: Path,
    specs: Sequence[SampleSpec] = PASCAL_SPECS,
    *,
    num_aux: int = 2,
    shard_size: int = 2,
    image_format: str = "png",
    fail: Sequence[str] = (),
    unfinished: Sequence[int] = (),
    drift: dict[str, Sequence[float]] | None = None,
    corrupt: Sequence[str] = (),
    model: str = "",
) -> SyntheticRun:
    """A run dir at `root/run` over a manifest at `root/manifest.jsonl` (data in `root/data`).

    `fail`: sample ids that get a failure record instead of images. `unfinished`: shard indices
    left without shard file and marker (an interrupted run). `drift`: sample id → drift_iou per
    aux index (others stay null: not scored). `corrupt`: sample ids whose aux bytes are no image.
    `model`: the plan's model (what `difaug score` loads to score the run)."""
    data = root / "data"
    records = []
    for i, spec in enumerate(specs):
        w, h = spec.size
        img_path = data / spec.parent / f"{spec.name}.jpg"
        mask_path = data / "masks" / f"{spec.name}_{spec.class_id}.png"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(w, h, 100 + i)).save(img_path, quality=95)
        Image.fromarray(synthetic_mask(w, h, spec.class_id, i)).save(mask_path)
        records.append(
            {
                "sample_id": spec.sample_id,
                "image": spec.image or str(img_path.relative_to(root)),
                "mask": str(mask_path.relative_to(root)),
                "class_id": spec.class_id,
                "class_name": spec.class_name,
                "dataset": spec.dataset,
                "split": "train",
                "fold": 0,
            }
        )
    manifest_path = root / "manifest.jsonl"
    write_manifest(records, manifest_path)
    manifest = read_manifest(manifest_path)
    assert not manifest.problems, manifest.problems

    cfg = JobConfig(
        num_aux=num_aux, shard_size=shard_size, image_format=image_format, steps=2, model=model
    ).validate()
    run_dir = root / "run"
    job = Job(manifest=str(manifest_path), out=str(run_dir), config=cfg)
    plan = build_plan(job, manifest)
    layout.write_plan(run_dir, plan)

    by_row = {s.row: s for s in manifest.samples}
    out = SyntheticRun(run_dir, manifest_path, num_aux, list(manifest.samples), {}, {}, [], tuple(unfinished))
    for shard in plan.shards:
        index, start, stop = shard.index, shard.start, shard.stop
        if index in unfinished:
            continue
        rows, failures = [], []
        for r in range(start, stop):
            sample = by_row[r]
            spec = specs[r - 1]
            if sample.sample_id in fail:
                failures.append(
                    Failure(r, sample.sample_id, "read", f"cannot decode {sample.image}: truncated file")
                )
                continue
            w, h = spec.size
            cond = smooth_image(64, 64, 7 * r)
            auxes = [smooth_image(w, h, 11 * r + k) for k in range(num_aux)]
            scores = (drift or {}).get(sample.sample_id) or [None] * num_aux
            rows += [
                _row_dict(sample, k, a, cond, cfg, scores[k], sample.sample_id in corrupt)
                for k, a in enumerate(auxes)
            ]
            out.aux[sample.sample_id] = auxes
            out.conditions[sample.sample_id] = cond
        path = shards.write_shard(layout.shard_path(run_dir, index), rows)
        out.failures += [f.to_dict() for f in failures]
        marker = ShardStats(
            shard=index,
            rows=(start, stop),
            plan_hash=plan.plan_hash,
            done=len({r["sample_id"] for r in rows}),
            failed=len(failures),
            images=len(rows),
            file=verify.file_record(path, len(rows)),
            failures=tuple(failures),
            seconds={
                "read": 0.01,
                "condition": 0.05,
                "generate": 0.5 * len(rows),
                "encode": 0.02,
                "write": 0.01,
            },
            load_seconds=1.0,
            wall_seconds=1.0 + 0.5 * len(rows) + 0.1,
            worker={"host": "test", "pid": 1},
            started=(T0 + timedelta(seconds=10 * index)).isoformat(timespec="milliseconds"),
            finished=(T0 + timedelta(seconds=10 * index + 5)).isoformat(timespec="milliseconds"),
        )
        layout.write_marker(run_dir, marker)
    return out
