"""What every manifest builder shares: list files, the per-image scan, skip reasons, the result.

A builder turns a dataset tree into manifest rows, one per (image, foreground class). Everything it
does not turn into a row is recorded as a `Skip` with a reason from `SkipReason`, so the summary
accounts for every image and every class it saw: nothing is dropped silently.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difaug.core import imageio
from difaug.core.classes import IGNORE_VALUE
from difaug.core.errors import DifaugError
from difaug.inputs.manifest import write_manifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# PFENet/BAM only ever sample a support whose class covers >= 2·32·32 pixels (Shaban's rule): a row
# below that would cost GPU time for an image no trainer picks.
DEFAULT_MIN_AREA = 2 * 32 * 32


class BuildError(DifaugError, ValueError):
    """The dataset tree or an option cannot give a manifest at all (missing root, bad fold…)."""


class SkipReason:
    """The reasons a builder leaves something out; the summary counts them by these exact strings."""

    MISSING_IMAGE = "missing image"
    MISSING_MASK = "missing mask"
    UNREADABLE_IMAGE = "unreadable image"
    UNREADABLE_MASK = "unreadable mask"
    SIZE_MISMATCH = "image/mask size mismatch"
    EMPTY = "empty foreground"  # the mask holds no class pixel at all (only 0 / 255)
    TOO_SMALL = "too small"  # a class with fewer than min_area pixels
    NOT_SELECTED = "class not in fold/split"
    UNKNOWN_CLASS = "unknown class id"
    DUPLICATE = "duplicate sample_id"
    BAD_LIST_LINE = "malformed list line"
    # BAM/HDMNet `make_dataset(filter_intersection=True)`: a training image that shows any class
    # outside the training classes is never sampled, for any of its classes.
    NOVEL_IN_IMAGE = "novel class in image"
    NOT_LISTED = "class not listed for this image"  # HSNet split files name (image, class) pairs
    LISTED_ABSENT = "listed class not in mask"


@dataclass(frozen=True)
class Skip:
    """One thing left out: an image (`class_id=None`) or one class of an image."""

    file: str
    reason: str
    detail: str = ""
    class_id: int | None = None


@dataclass
class BuildResult:
    """What a builder found: the manifest rows plus an account of everything it left out."""

    dataset: str
    rows: list[dict]
    skipped: list[Skip] = field(default_factory=list)
    images_read: int = 0
    notes: list[str] = field(default_factory=list)  # facts worth a line in the summary

    @classmethod
    def collected(
        cls,
        dataset: str,
        rows: list[dict],
        skipped: list[Skip],
        images_read: int,
        notes: list[str] | None = None,
    ) -> BuildResult:
        """What a build collected, as its result: the first row of each sample_id kept, every later
        one a `duplicate sample_id` skip (builders and the split merge report repeats alike)."""
        return cls(dataset, dedupe(rows, skipped), skipped, images_read, notes or [])

    @property
    def skip_counts(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    @property
    def class_counts(self) -> Counter[str]:
        """Rows per class name."""
        return Counter(r["class_name"] for r in self.rows)

    def write(self, out: str | Path, *, absolute: bool = False, root: str | Path | None = None) -> Path:
        """Write the rows as a manifest (format from `out`'s suffix), paths made portable (see
        `portable_path`). Returns the path written."""
        out = Path(out)
        base = out.resolve().parent
        rows = [
            {
                **r,
                "image": portable_path(r["image"], base, root, absolute=absolute),
                "mask": portable_path(r["mask"], base, root, absolute=absolute),
            }
            for r in self.rows
        ]
        write_manifest(rows, out)
        return out


def portable_path(path: str, manifest_dir: Path, root: str | Path | None, *, absolute: bool) -> str:
    """How a builder writes a path into a manifest.

    Relative (POSIX separators) when the file lies under the manifest's folder, or when the manifest
    is written inside the dataset root: then data and manifest move as one. Absolute otherwise, so a
    manifest kept elsewhere keeps working when it is moved on its own."""
    p = Path(path).resolve()
    if absolute:
        return str(p)
    inside_root = root is not None and _is_under(manifest_dir, Path(root).resolve())
    if _is_under(p, manifest_dir) or inside_root:
        return Path(os.path.relpath(p, manifest_dir)).as_posix()
    return str(p)


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise BuildError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))
    return path


# ---------------------------------------------------------------------------------------------------
# List files


@dataclass(frozen=True)
class ListEntry:
    line: int  # 1-based line number in the list file (the position for a pickled list)
    image: str  # as written (relative to root), "" when the line names a stem only
    mask: str
    stem: str
    class_id: int | None = None  # HSNet split files name one class per entry; None = every class


# `pfenet`: PFENet/BAM/HDMNet data lists (`JPEGImages/x.jpg SegmentationClassAug/x.png`, or stems).
# `hsnet`: HSNet/Matcher/DiffewS split files: PASCAL `data/splits/pascal/{trn,val}/fold*.txt`
# (lines `2007_000032__01`: stem, two underscores, 1-based class) and COCO
# `data/splits/coco/{trn,val}/fold*.pkl` (a pickled dict: 0-based class → `train2014/….jpg` names).
# `hdmnet`: HDMNet's pre-made `lists/{pascal,coco}/fss_list/{train,val}/sub_class_file_list_{fold}.txt`
# (`str()` of a dict: class id → [(image path, label path), …], the supports its `SemData` samples).
LIST_FORMATS = ("auto", "pfenet", "hsnet", "hdmnet")
HDMNET_SUPPORT_LIST = "sub_class_file_list_"
_HSNET_LINE = re.compile(r"^([^\s/]+)__(\d+)$")


def detect_list_format(path: Path) -> str:
    """`hsnet` for a `.pkl` file or a text file whose lines all look like `2007_000032__01`,
    `hdmnet` for HDMNet's `sub_class_file_list_*.txt`, else `pfenet`."""
    if path.suffix.lower() == ".pkl":
        return "hsnet"
    if path.name.startswith(HDMNET_SUPPORT_LIST):
        return "hdmnet"
    lines = [ln.strip() for ln in read_utf8(path, "the list file").splitlines() if ln.strip()]
    if lines and all(_HSNET_LINE.match(ln) for ln in lines):
        return "hsnet"
    return "pfenet"


def read_split_file(
    path: str | Path, list_format: str = "auto", *, image_dir: str = "JPEGImages", mask_dir: str = ""
) -> tuple[list[ListEntry], list[Skip]]:
    """Parse a data list in any of `LIST_FORMATS` (`auto` detects it). See `read_list_file` and
    `read_hsnet_split`."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"list file not found: {path}")
    if list_format not in LIST_FORMATS:
        raise BuildError(f"unknown list format {list_format!r}; use one of {', '.join(LIST_FORMATS)}")
    fmt = detect_list_format(path) if list_format == "auto" else list_format
    if fmt == "hsnet":
        return read_hsnet_split(path, image_dir=image_dir, mask_dir=mask_dir)
    if fmt == "hdmnet":
        return read_hdmnet_support_list(path)
    return read_list_file(path)


def read_hdmnet_support_list(path: str | Path) -> tuple[list[ListEntry], list[Skip]]:
    """HDMNet's `sub_class_file_list_{fold}.txt`: the dict its `SemData.__init__` `eval`s, read here
    with `ast.literal_eval` (literals only, no code). One entry per (image, label, class) listed;
    paths as HDMNet wrote them (`os.path.join(data_root, …)`: pass that `data_root`'s base as --root,
    absolute paths are kept)."""
    path = Path(path)
    try:
        data = ast.literal_eval(read_utf8(path, "HDMNet's support list").strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise BuildError(
            f"{path}: not HDMNet's sub_class_file_list (a dict class → [(image, label)]): {e}"
        ) from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: HDMNet's sub_class_file_list holds a dict, got {type(data).__name__}")
    entries: list[ListEntry] = []
    bad: list[Skip] = []
    n = 0
    for key in sorted(data, key=lambda k: (not isinstance(k, int), str(k))):
        items = data[key]
        if not isinstance(key, int) or not isinstance(items, (list, tuple)):
            bad.append(Skip(f"{path}[{key!r}]", SkipReason.BAD_LIST_LINE, "not an int class → list of pairs"))
            continue
        for item in items:
            n += 1
            ok = isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)
            if not ok:
                bad.append(
                    Skip(f"{path}[{key}]", SkipReason.BAD_LIST_LINE, f"{item!r} is not (image, label)")
                )
                continue
            image, label = (x.strip() for x in item)
            entries.append(ListEntry(n, image, label, Path(image).stem, key))
    return entries, bad


class _PlainUnpickler(pickle.Unpickler):
    """HSNet's split pickles hold only dicts, lists, ints and strings: refuse anything that would
    import code (a pickle can run arbitrary code on load)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain split pickle")


def read_hsnet_split(
    path: str | Path, *, image_dir: str = "JPEGImages", mask_dir: str = ""
) -> tuple[list[ListEntry], list[Skip]]:
    """HSNet's split files, as `data/pascal.py` and `data/coco.py` read them.

    PASCAL text (`2007_000032__01`): the image is `image_dir/{stem}.jpg`, the class the 1-based
    number after `__`. COCO pickle (`{0: ['train2014/COCO_train2014_….jpg', …], …}`): the image is
    the listed path, the mask `annotations/{path minus .jpg}.png` (or `mask_dir/…`), class = key + 1."""
    path = Path(path)
    entries: list[ListEntry] = []
    bad: list[Skip] = []
    if path.suffix.lower() == ".pkl":
        try:
            with path.open("rb") as fh:
                data = _PlainUnpickler(fh).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise BuildError(f"{path}: not an HSNet split pickle ({e})") from None
        if not isinstance(data, dict):
            raise BuildError(
                f"{path}: an HSNet split pickle holds a dict class → image names, got {type(data).__name__}"
            )
        n = 0
        for key in sorted(data, key=lambda k: (not isinstance(k, int), str(k))):
            names = data[key]
            if not isinstance(key, int) or not isinstance(names, (list, tuple)):
                bad.append(
                    Skip(f"{path}[{key!r}]", SkipReason.BAD_LIST_LINE, "not an int class → list of names")
                )
                continue
            for name in names:
                n += 1
                if not isinstance(name, str) or not name.lower().endswith(".jpg"):
                    bad.append(
                        Skip(f"{path}[{key}]", SkipReason.BAD_LIST_LINE, f"{name!r} is not a .jpg name")
                    )
                    continue
                image = _clean(name)
                mask = (
                    f"{mask_dir.rstrip('/')}/{Path(image).name[:-4]}"
                    if mask_dir
                    else f"annotations/{image[:-4]}"
                )
                entries.append(ListEntry(n, image, mask + ".png", Path(image).stem, key + 1))
        return entries, bad
    text = read_utf8(path, "the split file")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _HSNET_LINE.match(line)
        if m is None:
            bad.append(Skip(f"{path}:{lineno}", SkipReason.BAD_LIST_LINE, f"not 'stem__NN': {raw!r}"))
            continue
        stem, cls = m.group(1), int(m.group(2))
        entries.append(ListEntry(lineno, f"{image_dir}/{stem}.jpg", "", stem, cls))
    return entries, bad


def read_utf8(path: Path, what: str) -> str:
    """A text file as str (BOM stripped); a non-UTF-8 file is a `BuildError` naming the byte."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BuildError(f"{path}: {what} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_list_file(path: str | Path) -> tuple[list[ListEntry], list[Skip]]:
    """Parse a PFENet/BAM-style data list: `JPEGImages/x.jpg SegmentationClassAug/x.png` per line.

    Tolerates CRLF, blank lines, surrounding whitespace and leading slashes (paths are always taken
    relative to the root). A one-token line is an image path (mask found by stem) or a bare stem, as
    in VOC's `ImageSets/Segmentation/*.txt`. Lines with more than two tokens are reported, not guessed."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"list file not found: {path}")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    entries: list[ListEntry] = []
    bad: list[Skip] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) > 2:
            bad.append(Skip(f"{path}:{lineno}", SkipReason.BAD_LIST_LINE, f"{len(tokens)} fields: {raw!r}"))
            continue
        image = _clean(tokens[0])
        mask = _clean(tokens[1]) if len(tokens) == 2 else ""
        if len(tokens) == 1 and "/" not in image and not image.lower().endswith(IMAGE_EXTENSIONS):
            entries.append(ListEntry(lineno, "", "", image))
            continue
        entries.append(ListEntry(lineno, image, mask, Path(image).stem))
    return entries, bad


def _clean(token: str) -> str:
    return token.replace("\\", "/").lstrip("/")


def find_by_stem(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """`{stem: path}` for the image files directly in `folder` (one directory listing, not N stats).

    When a stem exists with several extensions the first of `extensions` wins, so `.jpg` beats `.png`."""
    if not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(extensions)}
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in rank or not entry.is_file():
                continue
            stem = os.path.splitext(entry.name)[0]
            if stem not in found or rank[ext] < found[stem][0]:
                found[stem] = (rank[ext], Path(entry.path))
    return {stem: p for stem, (_, p) in found.items()}


# ---------------------------------------------------------------------------------------------------
# Scanning image + mask pairs


@dataclass
class PairScan:
    """One image + mask read: the mask's values and counts, or the reason it cannot be used."""

    image: str
    mask: str
    reason: str = ""  # a SkipReason when the pair is unusable
    detail: str = ""
    counts: dict[int, int] = field(default_factory=dict)  # mask value → pixels
    mask_array: np.ndarray | None = None  # kept only when asked (binarising builders)

    @property
    def bad_file(self) -> str:
        """The file a skip of this pair names."""
        image_side = (SkipReason.MISSING_IMAGE, SkipReason.UNREADABLE_IMAGE)
        return self.image if self.reason in image_side else self.mask

    @property
    def skip(self) -> Skip:
        """The `Skip` that records this pair as unusable (its reason and the file it names)."""
        return Skip(self.bad_file, self.reason, self.detail)


def scan_pair(
    image: Path,
    mask: Path,
    *,
    deep: bool = False,
    read_mask: Callable[[Path], np.ndarray] | None = None,
    keep_mask: bool = False,
) -> PairScan:
    """Check one pair the way `validate_manifest` does, and count the mask's values.

    The image is checked at header cost (plus end-marker; `deep` decodes it); the mask is always
    decoded, since its values decide the rows."""
    scan = PairScan(str(image), str(mask))
    if not image.is_file():
        scan.reason = SkipReason.MISSING_IMAGE
        return scan
    if not mask.is_file():
        scan.reason = SkipReason.MISSING_MASK
        return scan
    try:
        width, height, _ = imageio.check_image_file(image, deep=deep)
    except imageio.ImageReadError as e:
        scan.reason, scan.detail = SkipReason.UNREADABLE_IMAGE, imageio.error_reason(e, image)
        return scan
    try:
        arr = read_mask(mask) if read_mask else imageio.load_mask(mask)
    except imageio.ImageReadError as e:
        scan.reason, scan.detail = SkipReason.UNREADABLE_MASK, imageio.error_reason(e, mask)
        return scan
    if arr.shape[:2] != (height, width):
        scan.reason = SkipReason.SIZE_MISMATCH
        scan.detail = f"image {width}×{height}, mask {arr.shape[1]}×{arr.shape[0]}"
        return scan
    scan.counts = imageio.value_counts(arr)
    if keep_mask:
        scan.mask_array = arr
    return scan


def class_pixels(counts: dict[int, int]) -> dict[int, int]:
    """Mask value counts without background (0) and ignore (255): the classes present."""
    return {v: n for v, n in counts.items() if v not in (0, IGNORE_VALUE)}


def rows_for_scan(
    scan: PairScan,
    *,
    dataset: str,
    names: dict[int, str],
    selected: set[int] | None,
    min_area: int,
    split: str,
    fold: int | None,
    sample_id: Callable[[int], str],
    mask_path: str | None = None,
    listed: frozenset[int] | None = None,
    filter_intersection: bool = False,
) -> tuple[list[dict], list[Skip]]:
    """Rows (one per selected class with >= min_area pixels) and skips for one usable pair.

    `listed`: the classes a split file names for this image (None: every class). With
    `filter_intersection` (BAM/HDMNet training lists) an image holding any class outside
    `selected` gives no row at all."""
    rows: list[dict] = []
    skips: list[Skip] = []
    present = class_pixels(scan.counts)
    if not present:
        return rows, [Skip(scan.mask, SkipReason.EMPTY, "no pixel other than 0 / 255")]
    for class_id in sorted((listed or frozenset()) - set(present)):
        skips.append(Skip(scan.mask, SkipReason.LISTED_ABSENT, f"value {class_id}", class_id))
    if filter_intersection and selected is not None:
        novel = sorted(set(present) - selected)
        if novel:
            detail = f"values {novel} outside the training classes (BAM's filter_intersection)"
            return rows, [Skip(scan.mask, SkipReason.NOVEL_IN_IMAGE, detail, c) for c in sorted(present)]
    for class_id, area in sorted(present.items()):
        if listed is not None and class_id not in listed:
            skips.append(Skip(scan.mask, SkipReason.NOT_LISTED, f"value {class_id}", class_id))
        elif class_id not in names:
            skips.append(Skip(scan.mask, SkipReason.UNKNOWN_CLASS, f"value {class_id}", class_id))
        elif selected is not None and class_id not in selected:
            skips.append(Skip(scan.mask, SkipReason.NOT_SELECTED, names[class_id], class_id))
        elif area < min_area:
            skips.append(
                Skip(scan.mask, SkipReason.TOO_SMALL, f"{names[class_id]}: {area} < {min_area} px", class_id)
            )
        else:
            rows.append(
                {
                    "sample_id": sample_id(class_id),
                    "image": scan.image,
                    "mask": mask_path or scan.mask,
                    "class_id": class_id,
                    "class_name": names[class_id],
                    "dataset": dataset,
                    "split": split,
                    "fold": fold,
                    "prompt": "",
                }
            )
    return rows, skips


def dedupe(rows: list[dict], skipped: list[Skip]) -> list[dict]:
    """Keep the first row of each sample_id; later ones become `duplicate sample_id` skips."""
    seen: dict[str, str] = {}
    kept: list[dict] = []
    for r in rows:
        first = seen.get(r["sample_id"])
        if first is not None:
            skipped.append(
                Skip(r["image"], SkipReason.DUPLICATE, f"{r['sample_id']}, first from {first}", r["class_id"])
            )
            continue
        seen[r["sample_id"]] = r["image"]
        kept.append(r)
    return kept


def fold_classes(n_classes: int, fold: int, rule: str) -> list[int]:
    """The test classes of one fold, 1-based ids.

    `contiguous`: fold i = classes n/4·i+1 … n/4·(i+1) (PASCAL-5i; PANet's COCO-20i);
    `interleaved`: fold i = i+1, i+5, i+9, … (COCO in HSNet, and in PFENet/BAM/HDMNet's shipped
    configs, which set `use_split_coco: True`)."""
    if fold not in range(4):
        raise BuildError(f"fold must be 0, 1, 2 or 3, got {fold}")
    per_fold = n_classes // 4
    if rule == "contiguous":
        return list(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))
    if rule == "interleaved":
        return list(range(fold + 1, n_classes + 1, 4))
    raise BuildError(f"unknown fold rule {rule!r}; use interleaved or contiguous")


def select_classes(
    n_classes: int, fold: int | None, split: str | None, rule: str = "contiguous"
) -> tuple[set[int] | None, str]:
    """(class ids to keep or None for all, the split column value) for a fold/split choice.

    `split=val` (also `test`): the fold's test classes; `split=train` (also `trn`): all the others.
    No fold: every class, and the split column just records `split`."""
    if split is not None and split not in ("train", "trn", "val", "test"):
        raise BuildError(f"unknown split {split!r}; use train or val")
    if fold is None:
        return None, split or ""
    if split is None:
        raise BuildError("--fold needs --split: val (the fold's test classes) or train (the others)")
    test = set(fold_classes(n_classes, fold, rule))
    if split in ("val", "test"):
        return test, split
    return set(range(1, n_classes + 1)) - test, split
