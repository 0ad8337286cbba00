"""FSS-1000: `ROOT/<class folder>/<n>.jpg` with a binary mask `<n>.png` beside each image.

The masks are 0/255 greyscale (some saved as RGB, some anti-aliased along the outline). The rest of
difaug takes `mask == class_id` as the foreground, and 255 means "ignore", so the raw masks cannot be
used as they are. The builder therefore writes a binarised copy of every mask it keeps:

- read as HSNet reads them: luminance (`PIL .convert("L")`), foreground = value >= `threshold`
  (default 128); anti-aliased pixels (values 1..254) are counted and reported in the summary;
- written to `mask_out/<class folder>/<n>.png` holding 0 and the row's `class_id` (8-bit PNG when the
  id is below 255, 16-bit otherwise), so `mask == class_id` is exactly HSNet's foreground.

`class_id` (`class_ids`):
- `hsnet` (the default when the class list is one of HSNet's split files `trn.txt`/`val.txt`/
  `test.txt`): HSNet's own class id + 1, where HSNet's id (`data/fss.py`) is the folder's index in
  the *sorted* split file + 0 / 520 / 760 for trn / val / test (`bus` in test.txt: 788, so 789 here).
  The `+ 1` is the rule HSNet's PASCAL and COCO masks follow too (mask value = class_id + 1), so one
  key function (`difaug.adapters.hsnet_keys`) serves all three benchmarks; the one id that would be
  255 ("ignore") is moved to 1255 (`manifest_class_id_from_hsnet`).
- `table`: the class's id in difaug's FSS-1000 table (1..1000) when the folder name is in it,
  otherwise a stable id from the name (`1001 + crc32(name) % 64000`, next free id on a clash).
`class_name` is the folder name with `_` → space (the prompt); the folder name itself stays in the
image path, which is what `difaug export --layout fss` names its folders by. sample_id is
`{class folder}_{stem}` since every class folder has its own `1.jpg … 10.jpg`.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from difaug.core import fsio, imageio
from difaug.core.classes import IGNORE_VALUE, class_table
from difaug.core.parallel import ProgressFn, parallel_map
from difaug.inputs.datasets.common import (
    IMAGE_EXTENSIONS,
    BuildError,
    BuildResult,
    PairScan,
    Skip,
    SkipReason,
    read_utf8,
    require_dir,
    scan_pair,
)

DEFAULT_THRESHOLD = 128
MISSING_CLASS_DIR = "missing class folder"
CLASS_ID_RULES = ("auto", "hsnet", "table")
# HSNet `data/fss.py` `sample_episode`: class id = index in the sorted split file + this offset.
HSNET_SPLIT_OFFSETS = {"trn": 0, "val": 520, "test": 760}


def read_luma_mask(path: Path) -> np.ndarray:
    """A binary-ish mask as HSNet reads FSS-1000: luminance of whatever mode the file has."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                return (np.asarray(img, dtype=np.int64) >> 8).astype(np.uint8)  # 16-bit → 8-bit
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise imageio.decode_error(str(path), e) from e


RESERVED_ID_REMAP = 1000 + IGNORE_VALUE


def write_binary_mask(path: Path, foreground: np.ndarray, class_id: int) -> None:
    """Write `0 / class_id` as a PNG (8-bit if the id fits below 255, else 16-bit). Same bytes each run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if class_id < IGNORE_VALUE:
        img = Image.fromarray(np.where(foreground, class_id, 0).astype(np.uint8))
    else:
        img = Image.fromarray(np.where(foreground, class_id, 0).astype(np.uint16))
    fsio.atomic_write(path, lambda tmp: img.save(tmp, format="PNG", compress_level=6), fsync=False)


def stable_class_ids(folders: list[str]) -> dict[str, int]:
    """Folder name → class id: the FSS-1000 table's id, else a stable id derived from the name.

    255 means "ignore" in every mask, so a table id of 255 would be moved to `1000 + 255`, outside
    the table's 1..1000 (the shared table gives "gazelle" 1255); its seg colour is looked
    up by name and is unchanged."""
    table = {
        info.class_name: (RESERVED_ID_REMAP if cid == IGNORE_VALUE else cid)
        for cid, info in class_table("fss1000").items()
    }
    ids = {f: table[f] for f in folders if f in table}
    taken = set(table.values()) | {IGNORE_VALUE}
    for f in sorted(set(folders) - set(ids)):
        cid = 1001 + zlib.crc32(f.encode()) % 64000
        while cid in taken:
            cid += 1
        ids[f] = cid
        taken.add(cid)
    return ids


def hsnet_fss_class_ids(categories: list[str], split: str) -> dict[str, int]:
    """HSNet's own (0-based) FSS-1000 class ids: index in the sorted split file + 0/520/760."""
    if split not in HSNET_SPLIT_OFFSETS:
        raise BuildError(f"HSNet's FSS-1000 ids need split trn, val or test, got {split!r}")
    return {c: i + HSNET_SPLIT_OFFSETS[split] for i, c in enumerate(sorted(categories))}


def manifest_class_id_from_hsnet(hsnet_class_id: int) -> int:
    """The mask value / manifest class_id of an HSNet class id (any benchmark): id + 1, as in
    HSNet's PASCAL and COCO masks; 255 is "ignore", so the one id that would get it gets 1255."""
    value = int(hsnet_class_id) + 1
    return RESERVED_ID_REMAP if value == IGNORE_VALUE else value


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


@dataclass
class _Item:
    folder: str
    image: Path
    mask: Path
    class_id: int


@dataclass
class _Outcome:
    item: _Item
    scan: PairScan
    area: int = 0
    antialiased: int = 0  # pixels with values strictly between 0 and 255
    written: Path | None = None


def build_fss1000(
    root: str | Path,
    *,
    mask_out: str | Path,
    list_file: str | Path | None = None,
    split: str | None = None,
    class_ids: str = "auto",
    min_area: int = 0,
    threshold: int = DEFAULT_THRESHOLD,
    deep: bool = False,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """One row per FSS-1000 image (binarised masks written under `mask_out`, see the module doc).

    `list_file`: class folder names, one per line (HSNet's `splits/fss/{trn,val,test}.txt`); without
    it every folder under `root`. `split` fills the split column (default: the HSNet split file's
    name). `class_ids`: `hsnet`, `table` or `auto` (see the module doc). `min_area` defaults to 0:
    FSS-1000 trainers sample every image of a class."""
    root = require_dir(Path(root).resolve(), "dataset root")
    mask_out = Path(mask_out).resolve()
    if not 0 < threshold <= 255:
        raise BuildError(f"threshold must be in 1..255, got {threshold}")
    rule, hsnet_split = _class_id_rule(class_ids, list_file, split)
    if rule == "hsnet":
        split = split or hsnet_split
    skipped: list[Skip] = []
    folders, listed = _class_folders(root, list_file, skipped)
    if rule == "hsnet":
        # Every listed class keeps its index, even when its folder is missing: HSNet's does too.
        hsnet_ids = hsnet_fss_class_ids(listed, str(hsnet_split))
        ids = {f: manifest_class_id_from_hsnet(i) for f, i in hsnet_ids.items()}
    else:
        ids = stable_class_ids(folders)
    items = _items(root, folders, ids, skipped)
    binarise = functools.partial(
        _binarise, deep=deep, threshold=threshold, min_area=min_area, mask_out=mask_out
    )
    outcomes = parallel_map(binarise, items, workers=workers, progress=progress, label="fss1000 masks")
    rows: list[dict] = []
    aa_masks = aa_pixels = 0
    for o in outcomes:
        if o.scan.reason:
            skipped.append(o.scan.skip)
            continue
        aa_masks += o.antialiased > 0
        aa_pixels += o.antialiased
        if (skip := _skip_of(o, threshold, min_area)) is not None:
            skipped.append(skip)
        else:
            rows.append(_row(o, split))
    result = BuildResult.collected("fss1000", rows, skipped, images_read=len(items))
    result.notes.append(
        f"masks binarised (luminance >= {threshold} is foreground) and written to {mask_out}; "
        f"{aa_masks} of them had anti-aliased pixels ({aa_pixels} px with values 1..254)"
    )
    if rule == "hsnet":
        result.notes.append(
            f"class ids are HSNet's ({hsnet_split}: sorted index + {HSNET_SPLIT_OFFSETS[str(hsnet_split)]}) + 1"
        )
    if listed and len(folders) < len(listed):
        result.notes.append(
            f"{len(listed) - len(folders)} of the {len(listed)} classes in {list_file} have no folder under {root}"
        )
    unknown = sorted(f for f in folders if ids[f] > 1000) if rule == "table" else []
    if unknown:
        shown = ", ".join(f"{f}={ids[f]}" for f in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        result.notes.append(
            f"{len(unknown)} class folder(s) not in the FSS-1000 table got stable ids: {shown}"
        )
    return result


def _class_id_rule(class_ids: str, list_file: str | Path | None, split: str | None) -> tuple[str, str | None]:
    """The class id rule `auto` stands for, and the HSNet split (trn/val/test) its ids count from."""
    if class_ids not in CLASS_ID_RULES:
        raise BuildError(f"unknown class id rule {class_ids!r}; use one of {', '.join(CLASS_ID_RULES)}")
    hsnet_split = Path(list_file).stem if list_file is not None else None
    if class_ids == "auto":
        class_ids = "hsnet" if hsnet_split in HSNET_SPLIT_OFFSETS else "table"
    if class_ids != "hsnet":
        return class_ids, hsnet_split
    if list_file is None:
        raise BuildError("--class-ids hsnet needs --list: HSNet's splits/fss/{trn,val,test}.txt")
    hsnet_split = split if split in HSNET_SPLIT_OFFSETS else hsnet_split
    if hsnet_split not in HSNET_SPLIT_OFFSETS:
        raise BuildError(
            f"--class-ids hsnet: cannot tell trn/val/test from {list_file}; pass --split trn, val or test"
        )
    return "hsnet", hsnet_split


def _class_folders(
    root: Path, list_file: str | Path | None, skipped: list[Skip]
) -> tuple[list[str], list[str]]:
    """The class folders to read and the classes the list names (missing folders included, skipped)."""
    if list_file is None:
        folders = sorted(
            (p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key
        )
        listed: list[str] = []
    else:
        listed = _read_class_list(Path(list_file))
        for f in [f for f in listed if not (root / f).is_dir()]:
            skipped.append(Skip(str(root / f), MISSING_CLASS_DIR, f"listed in {list_file}"))
        folders = [f for f in listed if (root / f).is_dir()]
        if not listed:
            raise BuildError(f"{list_file}: no class names in it; HSNet's splits/fss/*.txt list one per line")
        # A tree holding only some splits' folders (e.g. only test's) is fine for a multi-split
        # preset: every missing folder is a `missing class folder` skip, and the note counts them.
        return folders, listed
    if not folders:
        raise BuildError(f"no class folders under {root}; FSS-1000 is ROOT/<class>/<n>.jpg + <n>.png")
    return folders, listed


def _binarise(item: _Item, *, deep: bool, threshold: int, min_area: int, mask_out: Path) -> _Outcome:
    """Check one pair; write its binarised mask when its foreground is large enough."""
    scan = scan_pair(item.image, item.mask, deep=deep, read_mask=read_luma_mask, keep_mask=True)
    out = _Outcome(item, scan)
    if scan.mask_array is None:
        return out
    arr, scan.mask_array = scan.mask_array, None  # drop the array: results queue up in order
    fg = arr >= threshold
    out.area = int(fg.sum())
    out.antialiased = int(np.count_nonzero((arr > 0) & (arr < 255)))
    if out.area >= max(min_area, 1):
        out.written = mask_out / item.folder / f"{item.mask.stem}.png"
        write_binary_mask(out.written, fg, item.class_id)
    return out


def _class_name(folder: str) -> str:
    return folder.replace("_", " ")


def _skip_of(o: _Outcome, threshold: int, min_area: int) -> Skip | None:
    """Why a pair that was read gives no row (an empty or too small foreground), or None."""
    if o.area == 0:
        return Skip(o.scan.mask, SkipReason.EMPTY, f"no pixel >= {threshold}")
    if o.written is None:
        detail = f"{_class_name(o.item.folder)}: {o.area} < {min_area} px"
        return Skip(o.scan.mask, SkipReason.TOO_SMALL, detail, o.item.class_id)
    return None


def _row(o: _Outcome, split: str | None) -> dict:
    return {
        "sample_id": f"{o.item.folder}_{o.item.image.stem}",
        "image": o.scan.image,
        "mask": str(o.written),
        "class_id": o.item.class_id,
        "class_name": _class_name(o.item.folder),
        "dataset": "fss1000",
        "split": split or "",
        "fold": None,
        "prompt": "",
    }


def _read_class_list(path: Path) -> list[str]:
    if not path.is_file():
        raise BuildError(f"class list not found: {path}")
    names = [line.strip().strip("/") for line in read_utf8(path, "the class list").splitlines()]
    return list(dict.fromkeys(n for n in names if n))


def _items(root: Path, folders: list[str], ids: dict[str, int], skipped: list[Skip]) -> list[_Item]:
    items: list[_Item] = []
    image_exts = tuple(e for e in IMAGE_EXTENSIONS if e != ".png")
    for folder in folders:
        files = {p.name: p for p in (root / folder).iterdir() if p.is_file()}
        images = sorted(
            (p for p in files.values() if p.suffix.lower() in image_exts), key=lambda p: _natural_key(p.name)
        )
        stems = {p.stem for p in images}
        for p in images:
            items.append(_Item(folder, p, p.with_suffix(".png"), ids[folder]))
        for p in sorted(files.values()):  # a mask whose image is gone is worth a line too
            if p.suffix.lower() == ".png" and p.stem not in stems:
                skipped.append(Skip(str(p), SkipReason.MISSING_IMAGE, f"no {p.stem}.jpg beside it"))
    return items
