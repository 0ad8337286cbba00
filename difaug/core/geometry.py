"""ControlNet's working-size geometry: the size every condition and generated image has.

Below the conditions package because manifest validation needs it too (its size guards name the
working size a row would get, before any condition is made).
"""

from __future__ import annotations

from difaug.core.errors import DifaugError

DEFAULT_RESOLUTION = 512


class ConditionError(DifaugError, ValueError):
    """A condition cannot be built or computed (bad option, missing weights, a size with no working
    size); the message says why. Defined here, below `difaug.conditions`, because `working_size`
    raises it and manifest validation calls that."""


def working_size(width: int, height: int, resolution: int = DEFAULT_RESOLUTION) -> tuple[int, int]:
    """ControlNet's `resize_image` geometry: short side → `resolution`, both sides rounded to 64.

    Returns `(w, h)`. Restates `controlnet_aux.util.resize_image` exactly (float64 scale, numpy
    round-half-to-even of `side / 64`), so our sizes agree with the annotators pixel for pixel."""
    import numpy as np  # here, not at the top: the config (and so `difaug --help`) imports this module

    if width <= 0 or height <= 0:
        raise ConditionError(f"image size {width}×{height} is empty")
    if resolution < 64:
        raise ConditionError(f"resolution {resolution} is too small; use at least 64")
    k = float(resolution) / min(float(height), float(width))
    h = int(np.round(float(height) * k / 64.0)) * 64
    w = int(np.round(float(width) * k / 64.0)) * 64
    return w, h
