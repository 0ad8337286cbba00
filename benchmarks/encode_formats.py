"""Encoding one auxiliary image: CPU ms and bytes per lossless PNG setting and JPEG q95.

The encode stage is the largest host cost per image; at 40 images/s per GPU (LCM) it decides how
many encoder threads a worker needs (`RuntimeConfig.encode_threads`, default from the core count).
Input: the demo photos resized to 512² (photo-like content; noise would compress very differently).
Printed per setting: ms per image on one core (median of `--repeat`), kB, and whether it decodes
back to the same pixels. difaug's PNG is the `difaug PNG` row (`imageio.encode_png(fast=True)`: level 1,
Up filter); JPEG q95 is `--image-format jpeg` (what DifFSS saved; lossy).

    python benchmarks/encode_formats.py [--quick]

Last line: `encode_ms_per_image: N` (difaug's PNG setting) and the cores it needs at 40 images/s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo"


def photos(size: int) -> list[np.ndarray]:
    files = sorted(p for p in DEMO.rglob("*.jpg"))[:4]
    if not files:
        rng = np.random.default_rng(0)
        blur = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 6)
        return [((blur - blur.min()) / np.ptp(blur) * 255).astype(np.uint8)]
    return [
        cv2.resize(np.asarray(Image.open(f).convert("RGB")), (size, size), interpolation=cv2.INTER_AREA)
        for f in files
    ]


def pil(fmt: str, **kw):
    def enc(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **kw)
        return buf.getvalue()

    return enc


def ocv(ext: str, params: list[int]):
    def enc(img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(img[:, :, ::-1]), params)
        assert ok
        return buf.tobytes()

    return enc


def difaug_png(img: np.ndarray) -> bytes:
    from difaug.core.imageio import encode_png

    return encode_png(img, fast=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    imgs = photos(args.size)
    repeat = 3 if args.quick else args.repeat
    settings = {
        "PIL PNG level 6 (PIL default)": pil("PNG", compress_level=6),
        "PIL PNG level 1": pil("PNG", compress_level=1),
        "OpenCV PNG level 1": ocv(".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "OpenCV PNG RLE": ocv(
            ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        ),
        "OpenCV PNG Huffman-only, Paeth (before)": ocv(
            ".png",
            [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
            + (
                [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
                if hasattr(cv2, "IMWRITE_PNG_FILTER")
                else []
            ),
        ),
        "difaug PNG (level 1, Up filter)": difaug_png,
        "OpenCV JPEG q95": ocv(".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
        "PIL JPEG q95": pil("JPEG", quality=95),
    }
    print(f"{len(imgs)} photos at {args.size}², one thread, CPU ms (median of {repeat})")
    print(f"{'setting':<42}{'ms/img':>8}{'kB':>8}  lossless")
    ours = 0.0
    for label, enc in settings.items():
        times, sizes, same = [], [], True
        for img in imgs:
            for _ in range(repeat):
                t0 = time.process_time()  # CPU time: what the encoder threads need, whatever the load
                data = enc(img)
                times.append(time.process_time() - t0)
            sizes.append(len(data))
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            same = same and np.array_equal(back, img)
        ms = 1000 * statistics.median(times)
        if label.startswith("difaug"):
            ours = ms
        print(f"{label:<42}{ms:>8.1f}{statistics.mean(sizes) / 1024:>8.0f}  {'yes' if same else 'no'}")
    print(f"encode_ms_per_image: {ours:.1f} ({ours * 40 / 1000:.2f} cores at 40 images/s)")


if __name__ == "__main__":
    main()
