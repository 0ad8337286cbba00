"""Rebuild the bundled demo set from photographs that ship with scikit-image.

    .venv/bin/python manifests/demo/make_demo.py              # rewrite images/, masks/, manifest.csv
    .venv/bin/python manifests/demo/make_demo.py --overlays /tmp/demo   # also write mask overlays

Each photograph is cropped / resized to at most 384 px on its long side and saved as JPEG (q90,
greyscale sources stay greyscale). Each mask is made with OpenCV's GrabCut from a hand-chosen
rectangle plus hand-drawn hint strokes (sure foreground / sure background), then cleaned (largest
connected parts kept, holes filled) and checked by eye on the overlays. Masks are palette PNGs
(VOC colour map) whose pixel values are the class ids: 0 background, `class_id` foreground.

Deterministic: OpenCV's RNG is re-seeded before every GrabCut and runs single-threaded, so the same
scikit-image + OpenCV versions give the same bytes. Licences: see LICENSES.md next to this file.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from difaug.core.classes import voc_palette

HERE = Path(__file__).resolve().parent
MAX_SIDE = 384
JPEG_QUALITY = 90

# Hint shapes, in output-image pixels: ("rect", x0, y0, x1, y1), ("line", x0, y0, x1, y1, width),
# ("ellipse", cx, cy, rx, ry), ("poly", [(x, y), ...]).
Shape = tuple


@dataclass(frozen=True)
class Part:
    """One class in one photograph: GrabCut's starting rectangle and hint strokes."""

    class_id: int
    class_name: str
    rect: tuple[int, int, int, int]  # x, y, w, h: outside is sure background
    fg: tuple[Shape, ...] = ()  # sure foreground strokes
    bg: tuple[Shape, ...] = ()  # sure background strokes (inside the rectangle)
    probable_fg: tuple[Shape, ...] = ()  # when the object touches the border: start from these
    iterations: int = 8
    keep_components: int = 1  # largest connected parts kept (1 = one object)


@dataclass(frozen=True)
class Photo:
    name: str  # skimage.data function, also the file stem
    crop: tuple[int, int, int, int] | None  # (left, top, right, bottom) in source pixels
    parts: tuple[Part, ...] = field(default_factory=tuple)


# Class ids: PASCAL VOC ids for PASCAL classes, the FSS repos' COCO 1..80 ids for COCO classes, so the
# demo rows look like rows of the real builders. `rocket` is in neither table on purpose: it shows
# the seg condition's documented fallback for a class without an ADE20K colour.
PHOTOS: tuple[Photo, ...] = (
    Photo(
        "astronaut",
        None,
        (
            Part(
                15,
                "person",
                rect=(8, 4, 274, 380),
                fg=(("ellipse", 165, 75, 40, 50), ("rect", 40, 200, 200, 370), ("rect", 110, 125, 210, 190)),
                bg=(
                    # the helmet she holds is not part of her; nor is the grey backdrop left of her head
                    ("poly", [(212, 262), (262, 250), (330, 262), (384, 300), (384, 384), (205, 384)]),
                    (
                        "poly",
                        [
                            (8, 0),
                            (150, 0),
                            (136, 10),
                            (116, 30),
                            (110, 60),
                            (111, 100),
                            (96, 118),
                            (82, 140),
                            (72, 160),
                            (50, 174),
                            (8, 196),
                        ],
                    ),
                    ("rect", 236, 0, 384, 205),
                ),
            ),
        ),
    ),
    Photo(
        "camera",
        None,
        (
            Part(
                15,
                "person",
                rect=(0, 40, 262, 344),
                fg=(
                    ("rect", 10, 200, 100, 384),
                    ("rect", 40, 130, 140, 220),
                    ("ellipse", 160, 90, 20, 25),
                    ("ellipse", 239, 150, 8, 17),  # right glove on the camera
                    ("rect", 197, 140, 214, 158),  # left hand under it
                    ("rect", 202, 165, 212, 210),  # sleeve
                ),
                bg=(
                    ("poly", [(158, 224), (192, 238), (198, 384), (114, 384), (112, 292)]),  # grass
                    ("rect", 194, 103, 242, 125),  # the camera body
                    ("line", 219, 160, 219, 384, 7),  # tripod column
                    ("rect", 200, 218, 262, 384),  # tripod legs, grass
                ),
            ),
        ),
    ),
    Photo(
        "chelsea",
        None,
        (
            Part(
                8,
                "cat",
                rect=(0, 0, 384, 255),
                probable_fg=(("rect", 0, 0, 350, 255),),
                fg=(("ellipse", 180, 130, 120, 80),),
                bg=(("poly", [(300, 0), (384, 0), (384, 255), (350, 255), (360, 120)]),),
            ),
        ),
    ),
    Photo(
        "coffee",
        None,
        (
            Part(
                42,
                "cup",
                rect=(104, 4, 172, 190),
                fg=(
                    ("ellipse", 186, 63, 62, 42),
                    (
                        "poly",
                        [
                            (125, 110),
                            (245, 110),
                            (236, 140),
                            (220, 162),
                            (196, 172),
                            (164, 172),
                            (146, 162),
                            (132, 140),
                        ],
                    ),
                    (
                        "poly",
                        [(160, 150), (140, 150), (128, 160), (126, 176), (132, 188), (146, 191), (160, 184)],
                    ),
                ),
                bg=(("rect", 104, 150, 122, 194), ("rect", 168, 184, 205, 194), ("rect", 246, 145, 276, 194)),
            ),
            Part(
                45,
                "spoon",
                rect=(200, 36, 76, 172),
                fg=(
                    ("poly", [(258, 45), (267, 42), (271, 50), (266, 71), (259, 71)]),  # handle end
                    ("line", 244, 135, 238, 152, 4),  # neck
                    ("ellipse", 234, 178, 20, 20),  # bowl
                ),
                bg=(("ellipse", 186, 63, 70, 50), ("rect", 200, 80, 236, 145)),
                keep_components=2,  # the cup hides the middle of the handle
            ),
        ),
    ),
    Photo(
        "clock",
        None,
        (
            Part(
                75,
                "clock",
                rect=(116, 82, 176, 132),
                fg=(("ellipse", 203, 148, 70, 50),),
            ),
        ),
    ),
    Photo(
        "rocket",
        (200, 0, 456, 427),
        (Part(1, "rocket", rect=(86, 100, 50, 276), fg=(("line", 110, 130, 110, 360, 8),)),),
    ),
)


def load_photo(photo: Photo) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, photo.name)()
    img = Image.fromarray(arr)
    if photo.crop:
        img = img.crop(photo.crop)
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        size = (round(img.width * scale), round(img.height * scale))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def draw(target: np.ndarray, shape: Shape, value: int) -> None:
    kind = shape[0]
    if kind == "rect":
        _, x0, y0, x1, y1 = shape
        target[y0:y1, x0:x1] = value
    elif kind == "line":
        _, x0, y0, x1, y1, width = shape
        cv2.line(target, (x0, y0), (x1, y1), value, width)
    elif kind == "ellipse":
        _, cx, cy, rx, ry = shape
        cv2.ellipse(target, (cx, cy), (rx, ry), 0, 0, 360, value, -1)
    elif kind == "poly":
        cv2.fillPoly(target, [np.array(shape[1], dtype=np.int32)], value)
    else:
        raise ValueError(f"unknown hint shape {kind!r}")


def grabcut(rgb: np.ndarray, part: Part) -> np.ndarray:
    """Boolean foreground of one part."""
    h, w = rgb.shape[:2]
    x, y, rw, rh = part.rect
    gc = np.full((h, w), cv2.GC_BGD, dtype=np.uint8)
    gc[y : y + rh, x : x + rw] = cv2.GC_PR_BGD if part.probable_fg else cv2.GC_PR_FGD
    for s in part.probable_fg:
        draw(gc, s, cv2.GC_PR_FGD)
    for s in part.bg:
        draw(gc, s, cv2.GC_BGD)
    for s in part.fg:
        draw(gc, s, cv2.GC_FGD)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(rgb[:, :, ::-1].copy(), gc, None, bgd, fgd, part.iterations, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    return clean(fg, part.keep_components)


def clean(fg: np.ndarray, keep: int) -> np.ndarray:
    """Keep the `keep` largest connected parts, fill their holes, smooth the outline a little."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n > 1:
        order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:keep] + 1
        fg = np.isin(labels, order).astype(np.uint8)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(fg)
    cv2.drawContours(filled, contours, -1, 1, -1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    filled = cv2.morphologyEx(filled, cv2.MORPH_OPEN, kernel)
    return filled.astype(bool)


def overlay(img: Image.Image, mask: np.ndarray) -> Image.Image:
    rgb = np.asarray(img.convert("RGB")).astype(np.float32)
    pal = np.array(voc_palette(), dtype=np.float32).reshape(256, 3)
    colour = pal[mask]
    fg = (mask > 0)[:, :, None]
    out = np.where(fg, 0.45 * rgb + 0.55 * colour, 0.6 * rgb)
    edge = cv2.morphologyEx((mask > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edge] = (255, 255, 0)
    return Image.fromarray(out.astype(np.uint8))


def build(out_dir: Path, overlays: Path | None) -> list[dict]:
    cv2.setNumThreads(1)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in PHOTOS:
        img = load_photo(photo)
        rgb = np.asarray(img.convert("RGB"))
        mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
        for part in photo.parts:  # later parts are in front (the spoon lies on the saucer)
            mask[grabcut(rgb, part)] = part.class_id
        img.save(out_dir / "images" / f"{photo.name}.jpg", format="JPEG", quality=JPEG_QUALITY)
        png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
        png.putpalette(voc_palette())
        png.save(out_dir / "masks" / f"{photo.name}.png", format="PNG", optimize=True)
        if overlays is not None:
            overlays.mkdir(parents=True, exist_ok=True)
            overlay(img, mask).save(overlays / f"{photo.name}.png")
        for part in photo.parts:
            area = int((mask == part.class_id).sum())
            print(f"{photo.name}: {part.class_name} ({part.class_id}) {area} px of {mask.size}")
            rows.append(
                {
                    "sample_id": f"{photo.name}_{part.class_id}",
                    "image": f"images/{photo.name}.jpg",
                    "mask": f"masks/{photo.name}.png",
                    "class_id": part.class_id,
                    "class_name": part.class_name,
                    "dataset": "demo",
                    "split": "",
                    "fold": "",
                    "prompt": "",
                }
            )
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    parser.add_argument("--overlays", type=Path, default=None, help="also write mask overlays here")
    args = parser.parse_args()
    rows = build(args.out, args.overlays)
    print(f"{len(rows)} rows → {args.out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
