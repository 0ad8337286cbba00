"""A plain folder of your own data: `ROOT/images/<stem>.jpg` + `ROOT/masks/<stem>.png`.

Which class a mask shows comes from one of:
- `class_name` (+ `class_id`, default 1): every mask holds 0 / class_id (255 may mark ignore);
- a classes CSV with columns `class_id,class_name` and optionally `image`: rows without `image`
  form a table (mask value → name, one manifest row per value present, as for PASCAL); rows with
  `image` (a file name or stem) say which classes that one image's mask holds.

0/255 binary masks cannot be used as they are (255 means "ignore" throughout difaug): pass
`binarize=128` and the builder writes copies holding 0 / class_id (luminance >= threshold is
foreground) under `mask_out`, as the FSS-1000 builder does.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from difaug.core.classes import IGNORE_VALUE
from difaug.core.parallel import ProgressFn, parallel_map
from difaug.inputs.datasets.common import (
    BuildError,
    BuildResult,
    PairScan,
    Skip,
    SkipReason,
    class_pixels,
    find_by_stem,
    read_utf8,
    require_dir,
    rows_for_scan,
    scan_pair,
)
from difaug.inputs.datasets.fss1000 import read_luma_mask, write_binary_mask

NO_CLASS = "no class given"


def read_classes_csv(path: str | Path) -> tuple[dict[int, str], dict[str, dict[int, str]]]:
    """`(table, per_image)` from a classes CSV: `class_id,class_name[,image]`."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"classes CSV not found: {path}")
    table: dict[int, str] = {}
    per_image: dict[str, dict[int, str]] = {}
    with io.StringIO(read_utf8(path, "the classes CSV"), newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"class_id", "class_name"} - set(reader.fieldnames or [])
        if missing:
            raise BuildError(
                f"{path}: needs columns class_id,class_name (optional: image); missing {missing}"
            )
        for lineno, rec in enumerate(reader, 2):
            try:
                cid = int(str(rec["class_id"]).strip())
            except ValueError:
                raise BuildError(f"{path}:{lineno}: class_id {rec['class_id']!r} is not an integer") from None
            name = (rec.get("class_name") or "").strip()
            if not name:
                raise BuildError(f"{path}:{lineno}: empty class_name")
            _check_class_id(cid, f"{path}:{lineno}")
            image = (rec.get("image") or "").strip()
            if image:
                per_image.setdefault(Path(image.replace("\\", "/")).stem, {})[cid] = name
            else:
                table[cid] = name
    return table, per_image


def _check_class_id(cid: int, where: str) -> None:
    if cid == IGNORE_VALUE:
        raise BuildError(
            f"{where}: class_id 255 is the ignore value; for 0/255 binary masks use --binarize 128 "
            "(writes 0/<class id> copies)"
        )
    if cid <= 0:
        raise BuildError(f"{where}: class_id must be >= 1 (0 is background), got {cid}")


def build_folder(
    root: str | Path,
    *,
    image_dir: str = "images",
    mask_dir: str = "masks",
    class_name: str | None = None,
    class_id: int | None = None,
    classes: str | Path | None = None,
    binarize: int | None = None,
    mask_out: str | Path | None = None,
    min_area: int = 0,
    split: str | None = None,
    dataset: str = "folder",
    deep: bool = False,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Rows for a folder of images + masks matched by stem (see the module doc for the class rules)."""
    root = require_dir(Path(root).resolve(), "dataset root")
    table, per_image = _class_rules(class_name, class_id, classes)
    if binarize is not None:
        if not 0 < binarize <= 255:
            raise BuildError(f"--binarize threshold must be in 1..255, got {binarize}")
        if mask_out is None:
            raise BuildError("--binarize writes mask copies: give mask_out")
        if len(table) > 1:
            raise BuildError(
                "--binarize needs one class per image; a classes table with several ids has none"
            )
    skipped: list[Skip] = []
    pairs = _pairs(root, image_dir, mask_dir, skipped)

    reader = read_luma_mask if binarize is not None else None

    def work(pair: tuple[Path, Path]) -> tuple[list[dict], list[Skip]]:
        # All per-pair work happens on the pool, so no decoded mask waits in the ordered result queue.
        scan = scan_pair(pair[0], pair[1], deep=deep, read_mask=reader, keep_mask=binarize is not None)
        if scan.reason:
            return [], [scan.skip]
        stem = pair[0].stem
        names = per_image.get(stem, table)
        if not names:
            return [], [Skip(scan.image, NO_CLASS, "not in the classes CSV")]
        if binarize is not None:
            return _binarised(scan, names, binarize, Path(mask_out), min_area, dataset, split)  # type: ignore[arg-type]
        if not class_pixels(scan.counts) and IGNORE_VALUE in scan.counts:
            return [], [Skip(scan.mask, SkipReason.EMPTY, "only 0/255: a binary mask? use --binarize 128")]
        return rows_for_scan(
            scan,
            dataset=dataset,
            names=names,
            selected=None,
            min_area=min_area,
            split=split or "",
            fold=None,
            sample_id=lambda c: f"{stem}_{c}",
        )

    rows: list[dict] = []
    for new_rows, skips in parallel_map(
        work, pairs, workers=workers, progress=progress, label="folder masks"
    ):
        rows += new_rows
        skipped += skips
    result = BuildResult.collected(dataset, rows, skipped, images_read=len(pairs))
    if binarize is not None:
        result.notes.append(f"masks binarised (luminance >= {binarize} is foreground) into {mask_out}")
    return result


def _class_rules(
    class_name: str | None, class_id: int | None, classes: str | Path | None
) -> tuple[dict[int, str], dict[str, dict[int, str]]]:
    """`(table, per_image)`: one class for every mask, or what the classes CSV says."""
    if (class_name is None) == (classes is None):
        raise BuildError("give either --class-name (with --class-id) or --classes CSV")
    if classes is not None:
        if class_id is not None:
            raise BuildError("--class-id goes with --class-name; with --classes the CSV gives the ids")
        return read_classes_csv(classes)
    cid = 1 if class_id is None else class_id
    _check_class_id(cid, "--class-id")
    return {cid: str(class_name).strip()}, {}


def _pairs(root: Path, image_dir: str, mask_dir: str, skipped: list[Skip]) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by stem; an image or mask without its partner is skipped."""
    images = find_by_stem(require_dir(root / image_dir, "image folder", "pass --image-dir"))
    masks = find_by_stem(require_dir(root / mask_dir, "mask folder", "pass --mask-dir"), (".png",))
    pairs: list[tuple[Path, Path]] = []
    for stem in sorted(set(images) | set(masks)):
        if stem not in masks:
            skipped.append(Skip(str(images[stem]), SkipReason.MISSING_MASK, f"no {stem}.png in {mask_dir}"))
        elif stem not in images:
            skipped.append(Skip(str(masks[stem]), SkipReason.MISSING_IMAGE, f"no {stem}.* in {image_dir}"))
        else:
            pairs.append((images[stem], masks[stem]))
    return pairs


def _binarised(
    scan: PairScan,
    names: dict[int, str],
    threshold: int,
    mask_out: Path,
    min_area: int,
    dataset: str,
    split: str | None,
) -> tuple[list[dict], list[Skip]]:
    assert scan.mask_array is not None
    if len(names) != 1:
        return [], [Skip(scan.image, NO_CLASS, "--binarize needs exactly one class for this image")]
    ((cid, name),) = names.items()
    fg = scan.mask_array >= threshold
    scan.mask_array = None
    area = int(fg.sum())
    if area == 0:
        return [], [Skip(scan.mask, SkipReason.EMPTY, f"no pixel >= {threshold}")]
    if area < min_area:
        return [], [Skip(scan.mask, SkipReason.TOO_SMALL, f"{name}: {area} < {min_area} px", cid)]
    stem = Path(scan.image).stem
    out = mask_out / f"{stem}.png"
    write_binary_mask(out, fg, cid)
    row = {
        "sample_id": f"{stem}_{cid}",
        "image": scan.image,
        "mask": str(out),
        "class_id": cid,
        "class_name": name,
        "dataset": dataset,
        "split": split or "",
        "fold": None,
        "prompt": "",
    }
    return [row], []
