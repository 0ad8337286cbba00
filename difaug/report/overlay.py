"""Why an aux image scored low: its DiffSeg segments and its support mask's outline drawn over it.

`difaug inspect --explain` segments the lowest-scoring aux images again with DiffSeg on the run's
own base model (`load_explainer`: the scorer `difaug score` loads), because the shards keep a score
and a segment count per image, not its label map. `explain_lowest` returns, per key, what the
score was computed from (`diffseg.DriftExplanation`); `drift_overlay` draws it: every segment tinted
in its own colour, the segments counted as the object (mostly inside the mask) strongly tinted and
striped, the mask's outline in yellow. The recomputed score is shown next to the stored one: on the
run's own device and dtype they agree; on another (a CPU login node for a float16 GPU run) they can
differ a little, and the page says which was computed where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difaug.adapters.index import AuxIndex
from difaug.core import imageio
from difaug.core.config import RuntimeConfig
from difaug.diffusion.diffseg import DriftExplanation
from difaug.diffusion.segment_eval import colourise
from difaug.report.data import ScoreStats, lowest_images

OVERLAY_LEGEND = (
    "DiffSeg segments over the aux image, each in its own colour; striped and strongly tinted: the "
    "segments counted as the object (more than half of their area inside the mask); yellow: the "
    "support mask's outline. drift_iou is the IoU of the striped area with the mask."
)
EXPLAIN_HINT = "Why each scored low: `difaug inspect RUN --explain` draws its DiffSeg segments over it."
OUTLINE = np.array([255, 220, 0], np.float32)  # the mask's outline
STRIPE = np.array([255, 255, 255], np.float32)
INSIDE_ALPHA, OUTSIDE_ALPHA = 0.55, 0.25  # segment tint over the image

# (images, masks, class_ids) -> one explanation each: `DiffSeg.explain`.
Explainer = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[int]], list[DriftExplanation]]


def load_explainer(run_dir: str | Path, runtime: RuntimeConfig) -> Explainer:
    """DiffSeg on the run's own base model (from its plan), loaded without its ControlNet."""
    from difaug.diffusion import diffseg
    from difaug.run.rescore import run_config

    return diffseg.load(run_config(run_dir), runtime).explain


@dataclass(frozen=True)
class Explained:
    """One lowest-scoring aux image explained: what its score came from, and that drawn."""

    explanation: DriftExplanation
    overlay: np.ndarray  # `drift_overlay`

    def caption(self) -> str:
        iou = self.explanation.score.iou
        return (
            f"recomputed {'–' if iou is None else f'{iou:.2f}'}, "
            f"{self.explanation.counted} of {self.explanation.score.segments} segments counted"
        )


def explain_lowest(
    run_dir: str | Path,
    stats: ScoreStats,
    explainer: Explainer,
    index: AuxIndex | None = None,
    batch_size: int = 8,
) -> dict[str, Explained]:
    """Per key of `stats.lowest`, its score explained and drawn (images whose aux image or mask
    cannot be read are left out: their cell stays empty)."""
    index = index or AuxIndex(run_dir)
    todo: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    for low in lowest_images(stats, index):
        info = index.info(low.sample_id)
        try:
            mask = imageio.load_mask(info.mask)
        except (imageio.ImageReadError, OSError, ValueError):
            continue  # the support may live on another machine
        if low.image is not None and low.image.shape[:2] == mask.shape:
            todo.append((low.key, low.image, mask, info.class_id))
    out: dict[str, Explained] = {}
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        found = explainer([t[1] for t in part], [t[2] for t in part], [t[3] for t in part])
        for (key, image, mask, class_id), e in zip(part, found, strict=True):
            out[key] = Explained(e, drift_overlay(image, e, mask, class_id))
    return out


def _edges(region: np.ndarray, width: int) -> np.ndarray:
    """The pixels within `width` of the border between `region` and the rest."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(region, iterations=width)
    shrunk = ndimage.binary_erosion(region, iterations=width, border_value=1)
    return grown & ~shrunk


def drift_overlay(
    image: np.ndarray, explanation: DriftExplanation, mask: np.ndarray, class_id: int
) -> np.ndarray:
    """`image` (H×W×3 uint8) with the explanation's segments tinted, the counted ones striped,
    and the outline of the mask's `class_id` pixels; lines are sized to stay visible in a thumbnail."""
    labels = explanation.labels
    if labels.shape != mask.shape or image.shape[:2] != mask.shape:
        raise ValueError(
            f"image {image.shape[:2]}, labels {labels.shape} and mask {mask.shape} differ in size"
        )
    h, w = labels.shape
    line = max(1, round(max(h, w) / 128))  # ≈ 1 px of a 128-px thumbnail
    counted = explanation.inside[labels]
    alpha = np.where(counted, INSIDE_ALPHA, OUTSIDE_ALPHA)[..., None].astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colourise(labels).astype(np.float32) * alpha
    period = 6 * line
    rows, cols = np.indices((h, w))
    out[counted & ((rows + cols) % period < line)] = STRIPE
    out[_edges(mask == class_id, line)] = OUTLINE
    return out.round().clip(0, 255).astype(np.uint8)
