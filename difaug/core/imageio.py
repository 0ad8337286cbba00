"""Decode and encode support images and masks, from local paths or fsspec URLs.

Every image leaves here as an `H×W×3 uint8` RGB array and every mask as an `H×W` integer array of
the mask's own pixel values (palette indices for palette PNGs, 16-bit values kept), so the rest of
the pipeline never has to think about PIL modes.
"""

from __future__ import annotations

import importlib.util
import io
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from difaug.core.errors import DifaugError

# Large VOC/COCO images are fine; this only guards against decompression bombs in user data.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class ImageReadError(DifaugError, ValueError):
    """A file that is missing, unreadable or not an image we can use; the message says which."""


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# What `pip install 'difaug[http]'` adds: fsspec's HTTP backend imports both.
HTTP_INSTALL = "pip install 'difaug[http]' (or pip install aiohttp requests)"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: `sys.modules[name]` is None, the import is blocked
        return False


def url_support_problem(path: str) -> str:
    """Why this environment cannot read the URL `path`, as one sentence with the fix; '' when it can
    (or `path` is local). Checked at validation, so a missing fsspec backend is said once, up front,
    not as an ImportError per file in every worker."""
    if not is_url(path):
        return ""
    protocol = path.split("://", 1)[0].lower()
    if protocol in ("http", "https"):
        missing = [m for m in ("aiohttp", "requests") if not _importable(m)]
        if missing:
            return f"{protocol}:// URLs need {' and '.join(missing)}, not installed: {HTTP_INSTALL}"
        return ""
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:  # fsspec's message names the package ("Install s3fs to access S3")
        return f"{protocol}:// URLs need a package that is not installed: {e}"
    except ValueError:
        return f"unknown URL protocol {protocol}://; use a local path or an fsspec URL (https://, s3://, …)"
    return ""


def read_bytes(path: str | Path) -> bytes:
    path = str(path)
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(path, "rb") as fh:
                return fh.read()
        return Path(path.removeprefix("file://")).read_bytes()
    except ImportError as e:
        raise ImageReadError(f"cannot read {path}: {url_support_problem(path) or e}") from e
    except FileNotFoundError as e:
        raise ImageReadError(f"file not found: {path}") from e
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e


def decode_error(source: str, e: BaseException) -> ImageReadError:
    """The `ImageReadError` for a file PIL could not decode."""
    # PIL names the in-memory buffer (`<_io.BytesIO object at 0x…>`): say what it means instead.
    detail = "not an image file, or a format PIL cannot read" if isinstance(e, UnidentifiedImageError) else e
    return ImageReadError(f"cannot decode {source}: {detail}")


def error_reason(e: BaseException, path: str | Path) -> str:
    """An `ImageReadError` message without the file name, for tables that show the file already."""
    return str(e).replace(f" {path}:", ":").replace(f": {path}", "").replace(f" {path}", "")


def _open(data: bytes | str | Path, what: str) -> Image.Image:
    source = str(data) if not isinstance(data, bytes) else what
    raw = data if isinstance(data, bytes) else read_bytes(data)
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()  # truncated files fail here, not later in a worker
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise decode_error(source, e) from e
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
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise decode_error(path, e) from e
    return img.width, img.height, img.mode


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"


def _looks_complete(fmt: str | None, tail: bytes) -> bool | None:
    """Whether a file's last bytes hold its format's end marker; `None` when the format has none we know.

    A truncated download or copy loses its end marker, so this catches most broken files without
    decoding any pixels. Valid files with trailing junk fail it too; callers then decode to be sure."""
    tail = tail.rstrip(b"\x00\r\n\t ")
    if fmt == "JPEG":
        return tail.endswith(_JPEG_EOI)
    if fmt == "PNG":
        return tail.endswith(_PNG_IEND)
    return None


_STDERR_LOCK = threading.Lock()


def jpeg_decoder_warnings(raw: bytes) -> list[str]:
    """What libjpeg says while decoding `raw` ("Corrupt JPEG data: premature end of data segment",
    "Premature end of JPEG file", …); [] for a clean file.

    A JPEG cut short and then given an end marker decodes without an error: libjpeg pads the
    missing scan with zeros (the lower part comes out flat grey) and only *warns*. PIL discards
    those warnings and OpenCV prints them to file descriptor 2, so this decodes with OpenCV while
    fd 2 points at a temp file, under a lock (the redirect is process-wide). Anything else written
    to stderr in that window is kept only if it mentions JPEG, and is lost otherwise; the
    decode takes milliseconds, and only `--deep` validation calls this."""
    import cv2

    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        lines = sink.read().decode("utf-8", "replace").splitlines()
    # "N extraneous bytes before marker" is padding between segments (common in camera files);
    # the pixels are all there, so it is not a failure.
    found = [line.strip() for line in lines if "JPEG" in line and "extraneous bytes" not in line]
    del decoded  # PIL already decoded the file; OpenCV is here only for libjpeg's warnings
    return found


def check_image_file(path: str | Path, *, deep: bool = False) -> tuple[int, int, str]:
    """`(width, height, mode)` of an image file that exists and is complete, else `ImageReadError`.

    Default: header + end-marker check (JPEG EOI, PNG IEND), which finds truncated files at header
    cost; a file without the marker, or of another format, is fully decoded to decide. `deep=True`
    always decodes every pixel and, for JPEGs, treats decoder warnings as failures (finds corruption
    inside otherwise complete files, and files cut short and then given an end marker)."""
    path = str(path)
    try:
        if is_url(path):
            raw = read_bytes(path)
            fh: io.IOBase = io.BytesIO(raw)
            tail = raw[-64:]
        else:
            local = path.removeprefix("file://")
            fh = open(local, "rb")  # noqa: SIM115 - closed in finally, PIL needs it open for load()
            size = fh.seek(0, io.SEEK_END)
            fh.seek(max(0, size - 64))
            tail = fh.read()
            fh.seek(0)
    except FileNotFoundError as e:
        raise ImageReadError(f"file not found: {path}") from e
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e
    try:
        img = Image.open(fh)
        width, height, mode = img.width, img.height, img.mode
        fmt = img.format
        if deep or not _looks_complete(fmt, tail):
            img.load()  # truncated or corrupt data raises here
        if deep and fmt == "JPEG":
            fh.seek(0)
            warnings = jpeg_decoder_warnings(fh.read())
            if warnings:
                # a ValueError: decode_error below adds "cannot decode PATH"
                raise ValueError(
                    f"{warnings[0]} (the file is damaged, e.g. cut short); replace it with a good copy"
                )
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise decode_error(path, e) from e
    finally:
        fh.close()
    return width, height, mode


def value_counts(mask: np.ndarray) -> dict[int, int]:
    """`{pixel value: pixel count}` of a mask, values ascending.

    8-bit masks go through OpenCV's histogram: about 2x faster than `np.bincount` (which first
    widens every pixel to int64) and it releases the GIL, so a thread pool scales. Its float32 bins
    are exact below 2**24 pixels; larger masks take the numpy path."""
    arr = np.asarray(mask)
    if arr.dtype == np.uint8 and arr.ndim == 2 and arr.size < 2**24:
        import cv2

        counts = cv2.calcHist([np.ascontiguousarray(arr)], [0], None, [256], [0, 256]).ravel()
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    flat = arr.ravel()
    if flat.dtype == np.uint8:
        counts = np.bincount(flat, minlength=256)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


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


def encode_png(arr: np.ndarray, *, fast: bool = False) -> bytes:
    """PNG bytes of an `H×W` or `H×W×3` RGB array (lossless either way).

    Default: PIL at zlib level 6 (small files: conditions, masks, report images). `fast`: the
    cheapest encoding that keeps the size, zlib level 1 with the Up filter on every row, through
    OpenCV; a shard's aux images use it, since PNG encoding is the largest host cost per image.
    Measured on the demo photos at 512² with OpenCV 5 (`benchmarks/encode_formats.py`): ~8 ms CPU
    and 233 kB per image, against ~12 ms and 267 kB for Huffman-only + Paeth and ~17 ms for PIL's
    level 1."""
    if not fast:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11; older ones choose filters adaptively
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    bgr = arr[:, :, ::-1] if arr.ndim == 3 else arr  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {arr.shape}")
    return buf.tobytes()


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode(arr: np.ndarray, fmt: str, quality: int = 95, *, fast: bool = False) -> bytes:
    """`fmt` "png" (`encode_png`, `fast` as there) or "jpeg"/"jpg" at `quality`."""
    if fmt == "png":
        return encode_png(arr, fast=fast)
    if fmt in ("jpeg", "jpg"):
        return encode_jpeg(arr, quality)
    raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")
