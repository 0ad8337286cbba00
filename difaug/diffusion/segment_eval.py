"""Zero-shot segmentation with DiffSeg (`difaug segment`): label maps written as PNGs and matched
against ground-truth masks as the reference evaluates it (`diffseg/utils.py: hungarian_matching`,
mIoU over the classes that occur); `colourise` draws a label map for sheets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from difaug.core.classes import IGNORE_VALUE  # mask value that is neither object nor background

if TYPE_CHECKING:
    from difaug.diffusion.diffseg import DiffSeg


@dataclass
class MatchCounts:
    """Per-class true/false positives and false negatives over a dataset, after matching each
    image's segments to its classes (the reference's `diffseg/utils.py: hungarian_matching`)."""

    tp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fn: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pixels: int = 0

    def add(self, labels: np.ndarray, truth: np.ndarray) -> None:
        """One image: `labels` (segment ids) against `truth` (class ids; `IGNORE_VALUE` = unlabelled)."""
        from scipy.optimize import linear_sum_assignment

        valid = truth != IGNORE_VALUE
        gt = truth[valid].astype(np.int64).ravel()
        pred = labels[valid].astype(np.int64).ravel()
        n_class = max(len(self.tp), int(gt.max()) + 1 if gt.size else 0)
        for name in ("tp", "fp", "fn"):
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.zeros(n_class - len(arr))]))
        n_pred = max(n_class, int(pred.max()) + 1 if pred.size else 0)
        hist = np.bincount(n_pred * gt + pred, minlength=n_class * n_pred).reshape(n_class, n_pred)
        rows, cols = linear_sum_assignment(hist, maximize=True)
        self.pixels += int(hist.sum())
        self.fn += hist.sum(1) - hist[rows, cols]
        self.tp += hist[rows, cols]
        hist = hist[:, cols]
        self.fp += hist.sum(0) - np.diag(hist)

    def miou(self) -> float | None:
        """Mean IoU over the classes that occur (reference: `np.nanmean(TP / (TP + FP + FN))`)."""
        denom = self.tp + self.fp + self.fn
        seen = denom > 0
        return float(np.mean(self.tp[seen] / denom[seen])) if seen.any() else None

    def classes(self) -> int:
        """Class ids that occur (in a mask or matched to a segment)."""
        return int((self.tp + self.fp + self.fn > 0).sum())

    def pixel_accuracy(self) -> float | None:
        return float(self.tp.sum() / self.pixels) if self.pixels else None


def label_png(labels: np.ndarray) -> bytes:
    """A label map as a greyscale PNG (8-bit when it fits, else 16-bit): pixel value = segment id."""
    from difaug.core import imageio

    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    return imageio.encode_png(labels.astype(dtype))


def colourise(labels: np.ndarray) -> np.ndarray:
    """A label map in distinct colours (a fixed palette), for contact sheets."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 256, (max(int(labels.max(initial=0)) + 1, 1), 3), dtype=np.uint8)
    return palette[labels]


@dataclass(frozen=True)
class SegmentInput:
    """One image to segment; `mask`/`class_id` when a ground truth exists (manifest rows)."""

    name: str  # output file stem
    image: str
    mask: str = ""


@dataclass
class SegmentResult:
    written: list[Path] = field(default_factory=list)
    counts: MatchCounts = field(default_factory=MatchCounts)
    segments: list[int] = field(default_factory=list)
    previews: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = field(default_factory=list)


def segment_files(
    inputs: Sequence[SegmentInput],
    seg: DiffSeg,
    out: Path,
    *,
    batch_size: int = 4,
    previews: int = 8,
) -> SegmentResult:
    """Segment each image, write `out/{name}.png` label maps, match against masks when given."""
    from difaug.core import imageio

    out.mkdir(parents=True, exist_ok=True)
    result = SegmentResult()
    for start in range(0, len(inputs), batch_size):
        part = inputs[start : start + batch_size]
        images = [imageio.load_image(x.image) for x in part]
        for x, img, labels in zip(part, images, seg.segment_any(images, batch_size), strict=True):
            path = out / f"{x.name}.png"
            path.write_bytes(label_png(labels))
            result.written.append(path)
            result.segments.append(len(np.unique(labels)))
            truth = imageio.load_mask(x.mask) if x.mask else None
            if truth is not None:
                if truth.shape != labels.shape:
                    raise ValueError(
                        f"mask {x.mask} is {truth.shape[::-1]} but image {x.image} is {labels.shape[::-1]}"
                    )
                result.counts.add(labels, truth)
            if len(result.previews) < previews:
                result.previews.append((img, truth, labels))
    return result
