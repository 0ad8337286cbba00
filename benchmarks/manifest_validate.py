"""How fast `validate_manifest` checks a large manifest (default mode vs `--deep`).

Builds a PASCAL-like manifest in a temp dir: N/2 image + mask pairs (JPEG 500×375 q90, palette PNG
masks with two classes and a 255 ring, as SegmentationClassAug), two rows per mask, so 10,000 rows by
default. Then validates it with `read_manifest` + `validate_manifest` and prints rows per second.

    .venv/bin/python benchmarks/manifest_validate.py                  # 10,000 rows
    .venv/bin/python benchmarks/manifest_validate.py --rows 2000 --deep --workers 4
    .venv/bin/python benchmarks/manifest_validate.py --quick          # 2,000 rows (make bench)

The files are freshly written, so they sit in the page cache: this measures decode and Python
cost, not a cold disk or a network file system (there, more `--workers` hide the latency). No GPU is
involved; on a GPU machine run it the same way. The last line is
`manifest_validate_rows_per_s: N` (default mode).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from difaug.core.parallel import WORKERS_HELP
from difaug.inputs.manifest import read_manifest, validate_manifest, write_manifest

VARIANTS = 16  # distinct contents, copied under many names (decode cost is per file, not per content)


def _variants(width: int, height: int) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(0)
    images, masks = [], []
    y, x = np.mgrid[0:height, 0:width]
    for i in range(VARIANTS):
        base = np.stack([x * 255 / width, y * 255 / height, (x + y + 40 * i) % 256], axis=-1)
        img = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
        m = np.zeros((height, width), dtype=np.uint8)
        m[height // 8 - 1 : height // 2 + 1, width // 8 - 1 : width // 2 + 1] = 255
        m[height // 8 : height // 2, width // 8 : width // 2] = 1 + i % 20
        m[height // 2 : height - 10, width // 2 : width - 10] = 1 + (i + 7) % 20
        pal = Image.frombytes("P", (width, height), m.tobytes())
        pal.putpalette([c for v in range(256) for c in (v, (v * 7) % 256, (v * 13) % 256)])
        buf = io.BytesIO()
        pal.save(buf, format="PNG")
        masks.append(buf.getvalue())
    return images, masks


def build(root: Path, rows: int, width: int, height: int) -> Path:
    images, masks = _variants(width, height)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    out = []
    for k in range((rows + 1) // 2):
        v = k % VARIANTS
        stem = f"img_{k:06d}"
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(images[v])
        (root / "SegmentationClassAug" / f"{stem}.png").write_bytes(masks[v])
        for cid in (1 + v % 20, 1 + (v + 7) % 20):
            out.append(
                {
                    "image": f"JPEGImages/{stem}.jpg",
                    "mask": f"SegmentationClassAug/{stem}.png",
                    "class_id": cid,
                    "class_name": f"class {cid}",
                }
            )
    path = root / "manifest.csv"
    write_manifest(out[:rows], path)
    return path


def measure(path: Path, *, deep: bool, workers: int | None) -> tuple[float, int, int]:
    start = time.perf_counter()
    manifest = read_manifest(path)
    problems = validate_manifest(manifest, deep=deep, workers=workers)
    return time.perf_counter() - start, len(manifest.samples), len(problems)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--size", default="500x375", help="image width x height")
    parser.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    parser.add_argument("--deep", action="store_true", help="also time --deep (full image decode)")
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of --rows")
    args = parser.parse_args()
    if args.quick:
        args.rows = 2_000
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="difaug-bench-") as tmp:
        t0 = time.perf_counter()
        path = build(Path(tmp), args.rows, width, height)
        print(f"built {args.rows} rows ({(args.rows + 1) // 2} image/mask pairs, {width}×{height}) "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        results = {}
        for deep in (True, False) if args.deep else (False,):
            seconds, n, problems = measure(path, deep=deep, workers=args.workers)
            if problems:
                sys.exit(f"benchmark manifest has {problems} problem(s): the generator is broken")
            results[deep] = n / seconds
            mode = "--deep" if deep else "default"
            print(f"{mode:8s} {n} rows in {seconds:.2f} s = {n / seconds:,.0f} rows/s")
    print(f"manifest_validate_rows_per_s: {results[False]:.0f}")


if __name__ == "__main__":
    main()
