"""Geometry shared by the conditions: ControlNet's working-size resize, on the host."""

from __future__ import annotations

import numpy as np

from difaug.core.geometry import working_size


def hwc3(x: np.ndarray) -> np.ndarray:
    """`controlnet_aux.util.HWC3`: grey → 3 channels, RGBA → composited over white."""
    if x.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    if channels == 4:
        color = x[:, :, 0:3].astype(np.float32)
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Any grey / RGB / RGBA array, 8- or 16-bit or bool, → `H×W×3 uint8` (returned as is if already)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image must be H×W or H×W×C, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(
            f"image dtype {arr.dtype} is ambiguous; pass uint8 (or uint16) RGB, "
            "e.g. from difaug.core.imageio.load_image"
        )
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have 1, 3 or 4 channels, got {arr.shape[2]}")
    return hwc3(arr)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """`controlnet_aux.util.resize_image`: to `working_size`, Lanczos when enlarging, area when shrinking."""
    import cv2

    h, w = image.shape[:2]
    out_w, out_h = working_size(w, h, resolution)
    k = float(resolution) / min(float(h), float(w))
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool/uint8 mask to `size = (w, h)` (cv2 INTER_NEAREST)."""
    import cv2

    w, h = size
    arr = mask.astype(np.uint8)
    if arr.shape[1] == w and arr.shape[0] == h:
        return arr
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST)
