"""ControlNet conditions derived from a support image and its mask: `seg`, `hed`, `scribble`.

Every condition takes a batch of decoded samples (`ConditionInput`) and returns one `H×W×3 uint8`
image per sample at the ControlNet *working size* of that sample (`working_size`), in the same
order. Two styles exist for each condition:

- `diffss` (default) reproduces what DifFSS (Tan et al., arXiv 2307.00773) fed its ControlNets:
  seg = ADE20K colour of the class on the foreground, palette[0] elsewhere; hed = HED soft edges
  multiplied by the foreground mask dilated once with a 14×14 ellipse; scribble = that masked HED
  map thresholded at 127 (min over channels).
- `upstream` reproduces the plain ControlNet annotators (controlnet-aux): unmasked HED, and
  scribble by nms + Gaussian blur + threshold (`HEDdetector(..., scribble=True)`). A seg map is a
  class colour map in both styles, so `seg` ignores the style.

This module stays import-light (numpy only); torch and OpenCV load when a condition is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from difaug.core.config import CONDITION_STYLES, CONDITIONS, DEFAULT_HED_WEIGHTS
from difaug.core.geometry import DEFAULT_RESOLUTION, ConditionError
from difaug.inputs.manifest import Sample

# The HED weights file, in the hub repo `lllyasviel/Annotators` and in a model bundle's folder.
HED_FILENAME = "ControlNetHED.pth"
# HED always sees the image at this short side (DifFSS / ControlNet's detect_resolution, the
# working size's default); its map is then resized to the working size, so `resolution` changes
# the output size, not the edges.
DEFAULT_DETECT_RESOLUTION = DEFAULT_RESOLUTION
# Images per HED forward pass when `make_condition` is not told (a job passes its
# `RuntimeConfig.hed_batch_size`, `difaug conditions` its --batch-size).
DEFAULT_HED_BATCH = 16


@dataclass
class ConditionInput:
    """One decoded sample: the support image at its own size and the mask's raw values."""

    sample: Sample
    image: np.ndarray  # H×W×3 uint8 RGB
    mask: np.ndarray  # H×W ints (class ids; 255 = ignore)


@runtime_checkable
class ConditionMaker(Protocol):
    """Makes ControlNet conditions: one `H×W×3 uint8` image per input, same order, at each input's
    working size. `fallbacks` counts what was approximated (e.g. a class with no ADE colour), by
    name; it only grows, and the shard task records what a shard added."""

    fallbacks: Counter[str]

    def __call__(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]: ...


@runtime_checkable
class Condition(ConditionMaker, Protocol):
    """A named condition of this package: a `ConditionMaker` (a batch of inputs →
    condition images at `working_size`, `fallbacks` counted) with its name, style and resolution."""

    name: str
    style: str
    resolution: int
    fallbacks: Counter[str]

    def __call__(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]:
        """Condition images (H×W×3 uint8) at `working_size` of each input, same order."""
        ...


def conditions_or_errors(
    condition: ConditionMaker,
    batch: Sequence[ConditionInput],
    errors: tuple[type[BaseException], ...] = (ValueError,),
) -> list[np.ndarray | BaseException]:
    """The condition of each input, or the error (one of `errors`) that input raised.

    The batch goes through in one call; one bad input fails that whole call, so on an error the
    inputs are redone one by one and only the culprit gets its error. Anything not in `errors`
    propagates. Used by the shard task and `difaug conditions`."""
    try:
        return list(condition(batch))
    except errors as e:
        if len(batch) == 1:
            return [e]
    results: list[np.ndarray | BaseException] = []
    for item in batch:
        try:
            results.append(condition([item])[0])
        except errors as e:
            results.append(e)
    return results


def foreground(mask: np.ndarray, class_id: int) -> np.ndarray:
    """`mask == class_id` as a bool array (255 borders and other classes are background)."""
    return np.asarray(mask) == class_id


def prepare_input(item: ConditionInput) -> ConditionInput:
    """Normalise an input's arrays, or refuse it with a message naming the sample.

    The contract is `H×W×3 uint8`, but arrays straight from other tools are accepted too: grey
    (`H×W` or `H×W×1`), RGBA (composited over white, as controlnet-aux's `HWC3` does), 16-bit
    (scaled to 8 bits) and bool. The mask must have the image's height and width."""
    from difaug.conditions.resize import as_rgb8

    where = f"row {item.sample.row} ({item.sample.sample_id})"
    try:
        image = as_rgb8(item.image)
    except ValueError as e:
        raise ConditionError(f"{where}: {e}") from None
    mask = np.asarray(item.mask)
    if mask.ndim == 3:  # channels that agree (imageio refuses colour masks before we get here)
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ConditionError(
            f"{where}: mask shape {mask.shape} does not match the image's {image.shape[:2]} (H, W)"
        )
    if image is item.image and mask is item.mask:
        return item
    return ConditionInput(sample=item.sample, image=image, mask=mask)


class SampleLoadError(ConditionError):
    """A sample whose image or mask cannot be used; `column` and `file` say which."""

    def __init__(self, column: str, file: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.file = file


def load_input(sample: Sample) -> ConditionInput:
    """Decode one sample into a `ConditionInput` (what every condition takes); raises
    `SampleLoadError` naming the column and file. Used by the shard task and `difaug conditions`."""
    from difaug.core import imageio

    try:
        image = imageio.load_image(sample.image)
    except imageio.ImageReadError as e:
        raise SampleLoadError("image", sample.image, str(e)) from None
    try:
        mask = imageio.load_mask(sample.mask)
    except imageio.ImageReadError as e:
        raise SampleLoadError("mask", sample.mask, str(e)) from None
    if mask.shape[:2] != image.shape[:2]:
        raise SampleLoadError(
            "mask",
            sample.mask,
            f"mask {sample.mask} is {mask.shape[1]}×{mask.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}×{image.shape[0]}",
        )
    if not (mask == sample.class_id).any():
        # Its condition would be blank (all background), and nothing would say why.
        raise SampleLoadError("mask", sample.mask, f"mask has no pixel with class_id {sample.class_id}")
    try:
        return prepare_input(ConditionInput(sample=sample, image=image, mask=mask))
    except ConditionError as e:
        raise SampleLoadError("image", sample.image, str(e)) from None


def make_condition(
    name: str,
    *,
    style: str = "diffss",
    resolution: int = DEFAULT_RESOLUTION,
    hed_weights: str = DEFAULT_HED_WEIGHTS,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = DEFAULT_HED_BATCH,
    detect_resolution: int = DEFAULT_DETECT_RESOLUTION,
) -> Condition:
    """Build a condition by name (`seg`, `hed`, `scribble`); the one place their defaults are set.

    `device=None` picks CUDA when present, else CPU; `dtype=None` picks fp16 on CUDA, fp32 on CPU.
    `batch_size` bounds how many images go through the HED network in one forward pass;
    `detect_resolution` is the short side HED runs at (`hed`, `scribble`)."""
    if style not in CONDITION_STYLES:
        raise ConditionError(f"unknown condition style {style!r}; use one of {', '.join(CONDITION_STYLES)}")
    if resolution < 64:
        raise ConditionError(f"resolution {resolution} is too small; use at least 64")
    if name == "seg":
        from difaug.conditions.seg import SegCondition

        return SegCondition(style=style, resolution=resolution)
    if name in ("hed", "scribble"):
        from difaug.conditions.hed import HedCondition

        return HedCondition(
            name=name,
            style=style,
            resolution=resolution,
            weights=hed_weights,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            detect_resolution=detect_resolution,
        )
    raise ConditionError(f"unknown condition {name!r}; use one of {', '.join(CONDITIONS)}")
