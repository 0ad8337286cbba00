"""Decode and encode support images and masks, from local paths or fsspec URLs.

Every image leaves here as an `H×W×3 uint8` RGB array and every mask as an `H×W` integer array of
the mask's own pixel values (palette indices for palette PNGs, 16-bit values kept), so the rest of
the pipeline never has to think about PIL modes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Large VOC/COCO images are fine; this only guards against decompression bombs in user data.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class ImageReadError(ValueError):
    """A file that is missing, unreadable or not an image we can use; the message says which."""


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def read_bytes(path: str | Path) -> bytes:
    path = str(path)
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(path, "rb") as fh:
                return fh.read()
        return Path(path.removeprefix("file://")).read_bytes()
    except FileNotFoundError as e:
        raise ImageReadError(f"file not found: {path}") from e
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e


def exists(path: str | Path) -> bool:
    path = str(path)
    if is_url(path):
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(path)
        return fs.exists(paths[0])
    return Path(path.removeprefix("file://")).is_file()


def _open(data: bytes | str | Path, what: str) -> Image.Image:
    source = str(data) if not isinstance(data, bytes) else what
    raw = data if isinstance(data, bytes) else read_bytes(data)
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()  # truncated files fail here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"cannot decode {source}: {e}") from e
    return img


def probe(path: str | Path) -> tuple[int, int, str]:
    """`(width, height, mode)` from the file header only: cheap enough for 10k-row validation."""
    path = str(path)
    try:
        if is_url(path):
            img = Image.open(io.BytesIO(read_bytes(path)))
        else:
            with Image.open(path.removeprefix("file://")) as img:
                return img.width, img.height, img.mode
    except FileNotFoundError as e:
        raise ImageReadError(f"file not found: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"cannot decode {path}: {e}") from e
    return img.width, img.height, img.mode


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image → `H×W×3 uint8`. 16-bit greyscale is scaled to 8 bits, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        top = 65535 if img.mode != "I" or arr.max(initial=0) > 255 else 255
        arr8 = np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr8 = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_image(data: bytes | str | Path) -> np.ndarray:
    """Decode a support image to `H×W×3 uint8` RGB (grey, palette, RGBA, CMYK, 16-bit all accepted)."""
    return to_rgb(_open(data, "image bytes"))


def mask_values(img: Image.Image, source: str = "mask") -> np.ndarray:
    """A mask's pixel values as `H×W` integers: palette indices for `P`, raw values for `L`/16-bit.

    RGB(A) masks are accepted when their colour channels agree (a grey mask saved as RGB, as many
    FSS-1000 files are); a real colour-coded mask is refused, since its colours are not class ids."""
    if img.mode in ("P", "L", "1"):
        return np.asarray(img.convert("L") if img.mode == "1" else img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img, dtype=np.int32)
    if img.mode == "LA":
        return np.asarray(img, dtype=np.uint8)[:, :, 0]
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if not (np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2])):
        raise ImageReadError(
            f"{source}: colour mask (mode {img.mode}) with differing channels; save masks as class-id "
            "PNGs (palette or greyscale) whose pixel values are class ids"
        )
    return arr[:, :, 0]


def load_mask(data: bytes | str | Path) -> np.ndarray:
    """Decode a mask to an `H×W` integer array of its pixel values."""
    source = str(data) if not isinstance(data, bytes) else "mask bytes"
    return mask_values(_open(data, "mask bytes"), source)


def resize(arr: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize to `size = (width, height)`; bicubic for photos, nearest for masks and label maps."""
    import cv2

    width, height = size
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif width * height < arr.shape[0] * arr.shape[1]:
        interpolation = cv2.INTER_AREA  # shrinking: area averaging avoids aliasing
    else:
        interpolation = cv2.INTER_CUBIC
    return cv2.resize(arr, (width, height), interpolation=interpolation)


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode(arr: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    if fmt == "png":
        return encode_png(arr)
    if fmt in ("jpeg", "jpg"):
        return encode_jpeg(arr, quality)
    raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")
