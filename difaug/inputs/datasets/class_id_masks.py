"""The builder shared by PASCAL-5i and COCO-20i: trees whose mask pixel values are class ids.

Pairs come from data lists (PFENet/BAM lists, HSNet split files) or from the mask folders; each
pair is scanned once on the reader pool and gives one row per selected class present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from difaug.core.classes import class_table
from difaug.core.parallel import ProgressFn, parallel_map
from difaug.inputs.datasets.common import (
    DEFAULT_MIN_AREA,
    BuildError,
    BuildResult,
    PairScan,
    Skip,
    SkipReason,
    find_by_stem,
    read_split_file,
    require_dir,
    rows_for_scan,
    scan_pair,
)

ListFiles = str | Path | Sequence[str | Path] | None


class ClassIdOptions(TypedDict, total=False):
    """The keywords `build_pascal5i` and `build_coco20i` hand on to `build_class_id_masks` as they
    are (`**options: Unpack[ClassIdOptions]`); meaning and defaults: `build_class_id_masks`."""

    list_file: ListFiles
    list_format: str
    min_area: int
    filter_intersection: bool
    deep: bool
    workers: int | None
    progress: ProgressFn | None


def build_class_id_masks(
    dataset: str,
    root: str | Path,
    *,
    selected: set[int] | None,
    split: str,
    fold: int | None,
    image_dirs: list[str],
    mask_dirs: list[str] | None,
    default_mask_dirs: list[str],
    list_file: ListFiles = None,
    list_format: str = "auto",
    min_area: int = DEFAULT_MIN_AREA,
    filter_intersection: bool = False,
    deep: bool = False,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """The shared PASCAL/COCO builder: masks whose pixel values are class ids.

    `dataset` names the class table (`pascal`, `coco`); `selected`/`split`: the builder's
    `select_classes` result. `image_dirs[i]` pairs with `mask_dirs[i]` (both relative to root) when
    no list is given; `default_mask_dirs`: the mask folders tried, in order, when `mask_dirs` is None.
    `list_file`: one or more data lists (PFENet/BAM lists, HSNet split files; `list_format` `auto`
    detects which); `min_area`: fewer pixels of a class is a `too small` skip;
    `filter_intersection` (train split with a fold only): drop images showing any test class, as
    BAM's training lists do; `deep`: decode every image fully; `workers`/`progress`: the reader pool."""
    names = {cid: info.class_name for cid, info in class_table(dataset).items()}
    root = require_dir(Path(root).resolve(), "dataset root")
    if filter_intersection and (selected is None or split not in ("train", "trn")):
        raise BuildError(
            "filter_intersection needs --fold and --split train (it drops training images "
            "that show a test class)"
        )
    skipped: list[Skip] = []
    # Classes named per pair by HSNet split files (an image on several lines: the union). Pairs of
    # plain lists stay one per line, so a repeated line is reported as a duplicate.
    listed: dict[tuple[Path, Path], frozenset[int]] = {}
    if list_file is not None:
        files = [list_file] if isinstance(list_file, (str, Path)) else list(list_file)
        pairs = []
        for f in files:
            found, bad = _pairs_from_list(root, f, list_format, image_dirs, mask_dirs or default_mask_dirs)
            skipped += bad
            for pair, classes in found:
                if classes is None:
                    pairs.append(pair)
                elif pair in listed:
                    listed[pair] |= classes
                else:
                    listed[pair] = classes
                    pairs.append(pair)
    else:
        pairs = _pairs_from_tree(root, image_dirs, mask_dirs, default_mask_dirs, skipped)

    def scan(pair: tuple[Path, Path]) -> PairScan:
        return scan_pair(pair[0], pair[1], deep=deep)

    rows: list[dict] = []
    for result in parallel_map(scan, pairs, workers=workers, progress=progress, label=f"{dataset} masks"):
        if result.reason:
            skipped.append(result.skip)
            continue
        stem = Path(result.image).stem
        new_rows, skips = rows_for_scan(
            result,
            dataset=dataset,
            names=names,
            selected=selected,
            min_area=min_area,
            split=split,
            fold=fold,
            sample_id=lambda cid, stem=stem: f"{stem}_{cid}",
            listed=listed.get((Path(result.image), Path(result.mask))),
            filter_intersection=filter_intersection,
        )
        rows += new_rows
        skipped += skips
    return BuildResult.collected(dataset, rows, skipped, images_read=len(pairs))


def _pairs_from_list(
    root: Path, list_file: str | Path, list_format: str, image_dirs: list[str], mask_dirs: list[str]
) -> tuple[list[tuple[tuple[Path, Path], frozenset[int] | None]], list[Skip]]:
    """(image, mask) pairs of a list, each with the classes it names (None: every class)."""
    entries, skipped = read_split_file(list_file, list_format, image_dir=image_dirs[0])
    pairs = []
    for e in entries:
        image = _under_root(root, e.image) if e.image else root / image_dirs[0] / f"{e.stem}.jpg"
        if e.mask:
            mask = _under_root(root, e.mask)
        else:
            mask_dir = next((d for d in mask_dirs if (root / d).is_dir()), mask_dirs[0])
            mask = root / mask_dir / f"{e.stem}.png"
        pairs.append(((image, mask), None if e.class_id is None else frozenset({e.class_id})))
    return pairs, skipped


def _under_root(root: Path, rel: str) -> Path:
    # Lists are relative to the root even when written with a leading slash; an absolute path that
    # exists while the root-relative one does not is taken as meant.
    p = root / rel
    if not p.exists() and Path("/" + rel).exists():
        return Path("/" + rel)
    return p


def _pairs_from_tree(
    root: Path,
    image_dirs: list[str],
    mask_dirs: list[str] | None,
    default_mask_dirs: list[str],
    skipped: list[Skip],
) -> list[tuple[Path, Path]]:
    """Every mask in each mask dir, paired by stem with the matching image dir.

    Masks drive the scan: VOC has ~17k JPEGs but masks for ~12k, and an unlabelled image is not a
    problem, while a mask without its image is (reported as `missing image`)."""
    if mask_dirs is None:
        found = next((d for d in default_mask_dirs if (root / d).is_dir()), None)
        if found is None:
            raise BuildError(
                f"no mask folder under {root} (looked for {', '.join(default_mask_dirs)}); "
                "pass --mask-dir or --list"
            )
        mask_dirs = [found] * len(image_dirs)
    pairs: list[tuple[Path, Path]] = []
    for image_dir, mask_dir in zip(image_dirs, mask_dirs, strict=True):
        require_dir(root / mask_dir, "mask folder", "pass --mask-dir or --list")
        images = find_by_stem(require_dir(root / image_dir, "image folder", "pass --image-dir or --list"))
        masks = find_by_stem(root / mask_dir, (".png",))
        for stem in sorted(masks):
            image = images.get(stem)
            if image is None:
                skipped.append(
                    Skip(str(masks[stem]), SkipReason.MISSING_IMAGE, f"no {stem}.* in {root / image_dir}")
                )
                continue
            pairs.append((image, masks[stem]))
    return pairs
