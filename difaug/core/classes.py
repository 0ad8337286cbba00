"""Class tables shipped with the package: class id → name → ADE20K index, and the ADE20K palette."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np

# The mask value meaning "ignore" (VOC borders, unlabelled pixels) in every mask difaug reads or
# writes: never a class id, never foreground, never background.
IGNORE_VALUE = 255


@dataclass(frozen=True)
class ClassInfo:
    dataset: str
    class_id: int
    class_name: str
    ade_index: int


def _read_tsv(name: str) -> list[dict[str, str]]:
    text = resources.files("difaug.core.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


@cache
def class_table(dataset: str) -> dict[int, ClassInfo]:
    """`{class_id: ClassInfo}` for one of `pascal`, `coco`, `fss1000`."""
    rows = [r for r in _read_tsv("class_to_ade.tsv") if r["dataset"] == dataset]
    if not rows:
        known = sorted({r["dataset"] for r in _read_tsv("class_to_ade.tsv")})
        raise KeyError(f"no class table for dataset {dataset!r}; known: {', '.join(known)}")
    return {
        int(r["class_id"]): ClassInfo(dataset, int(r["class_id"]), r["class_name"], int(r["ade_index"]))
        for r in rows
    }


@cache
def ade_index_by_name() -> dict[str, int]:
    """Class name → ADE20K index over all tables (names normalised: lower case, `_` → space).

    Used for rows whose dataset has no table of its own (folder manifests, custom data)."""
    out: dict[str, int] = {}
    for r in _read_tsv("class_to_ade.tsv"):
        out.setdefault(normalise_name(r["class_name"]), int(r["ade_index"]))
    for r in _read_tsv("ade20k_palette.tsv"):
        out.setdefault(normalise_name(r["ade_name"]), int(r["ade_index"]))
    for alias, name in NAME_ALIASES.items():
        out.setdefault(alias, out[name])
    return out


# PASCAL VOC's own spellings (as in its devkit and many FSS repos) → the names in our table.
NAME_ALIASES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "television",
    "tv monitor": "television",
    "tv": "television",
}


def normalise_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


@lru_cache(maxsize=1)
def ade_palette() -> np.ndarray:
    """The ADE20K colour palette as a `(150, 3)` uint8 array indexed by ADE index."""
    rows = _read_tsv("ade20k_palette.tsv")
    palette = np.zeros((len(rows), 3), dtype=np.uint8)
    for r in rows:
        palette[int(r["ade_index"])] = (int(r["r"]), int(r["g"]), int(r["b"]))
    return palette


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (bit-interleaved), 256 × RGB as a flat list, for `Image.putpalette`:
    class-id masks saved with it look like VOC's own `SegmentationClass` PNGs."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal
