"""Helpers for the conditions tests: synthetic samples, random HED weights, the DifFSS steps restated."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from difaug.conditions import ConditionInput
from difaug.inputs.manifest import Sample

# Small working sizes keep HED fast on CPU; 128 is a multiple of 64, so HEDdetector's
# detect_resolution and image_resolution give the working size exactly.
RES = 128


def synthetic(width: int, height: int, seed: int = 0, class_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A structured RGB image (smooth background, two filled shapes) and its mask.

    The mask has `class_id` on an ellipse, class 2 on a rectangle, and a 255 "ignore" border, as
    VOC masks do."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((height, width), np.uint8)
    centre = (int(width * 0.4), int(height * 0.5))
    axes = (max(1, width // 5), max(1, height // 4))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    cv2.ellipse(image, centre, axes, 15, 0, 360, colour, -1)
    cv2.ellipse(mask, centre, axes, 15, 0, 360, class_id, -1)
    x0, y0 = int(width * 0.7), int(height * 0.15)
    x1, y1 = int(width * 0.9), int(height * 0.45)
    image[y0:y1, x0:x1] = rng.integers(0, 255, 3).astype(np.uint8)
    mask[y0:y1, x0:x1] = 2
    cv2.ellipse(mask, centre, axes, 15, 0, 360, 255, max(1, min(width, height) // 60))
    noise = rng.normal(0, 6, image.shape)
    image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return image, mask


def sample(
    sample_id: str = "s0",
    class_id: int = 1,
    class_name: str = "airplane",
    dataset: str = "pascal",
    row: int = 1,
) -> Sample:
    return Sample(
        row=row,
        sample_id=sample_id,
        image=f"{sample_id}.jpg",
        mask=f"{sample_id}.png",
        class_id=class_id,
        class_name=class_name,
        dataset=dataset,
    )


def inputs(sizes: list[tuple[int, int]], class_id: int = 1) -> list[ConditionInput]:
    out = []
    for i, (w, h) in enumerate(sizes):
        image, mask = synthetic(w, h, seed=i, class_id=class_id)
        out.append(ConditionInput(sample(f"s{i}", class_id, row=i + 1), image, mask))
    return out


@pytest.fixture(scope="module")
def hed_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder `Annotators/` holding a random `ControlNetHED.pth` (seed 0)."""
    from difaug.conditions.hed import make_random_hed_weights

    folder = tmp_path_factory.mktemp("hed") / "Annotators"
    make_random_hed_weights(folder, seed=0)
    return folder


# --- DifFSS steps restated plainly (independent of difaug's helpers) -------------------------


def restated_diffss_hed(edge_hw3: np.ndarray, mask: np.ndarray, class_id: int) -> np.ndarray:
    """HED map × (mask == class_id, nearest-resized to the map, dilated once with a 14×14 ellipse)."""
    h, w = edge_hw3.shape[:2]
    fg = (mask == class_id).astype(np.uint8)
    fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST)
    fg = cv2.dilate(fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (14, 14)), iterations=1)
    return edge_hw3 * fg[:, :, None]


def restated_diffss_scribble(masked_hw3: np.ndarray) -> np.ndarray:
    """255 where the minimum over channels is > 127, else 0, on all three channels."""
    out = np.zeros_like(masked_hw3)
    out[np.min(masked_hw3, axis=2) > 127] = 255
    return out


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """(max |difference|, fraction of differing pixels)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
    return int(diff.max()), float((diff > 0).mean())


def controlnet_aux(name: str):
    """Import a controlnet-aux submodule (the reference implementation) without its import noise.

    `import controlnet_aux` imports every annotator, some of which warn about optional packages."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{name}")
