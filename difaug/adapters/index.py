"""`AuxIndex`: from a support (image path or sample_id, class_id) to its auxiliary images, lazily.

Opening an index reads only the shards' key columns and Parquet footers (a few bytes per aux
image); the image bytes stay on disk until asked for, and are then read one row group at a time
(≈100 images), with a small per-process LRU cache so the shots of one support, which sit in the
same row group, cost one read. Safe to use from DataLoader worker processes: each process opens
its own file handles.

A trainer rarely knows our sample ids, so a support can be named several ways, tried from the most
to the least specific, and refused if a name matches two different images:
the sample_id; the image path exactly as in the manifest (or normalised); and its tails
`parent/name`, `name`, `parent/stem`, `stem` (HSNet names PASCAL supports by stem, `2007_000032`,
and COCO ones by `train2014/COCO_train2014_….jpg`).

`min_drift_iou=X` keeps only aux images whose DiffSeg drift score (`drift_iou`, written by
`difaug score` or a scoring run) is at least X; a run without scores is refused with the command
that adds them. `aux_images(…, k=2, choose="random", seed=episode)` picks k of the kept images,
the same k for the same seed (per episode), fresh ones per call without a seed.
"""

from __future__ import annotations

import os
import posixpath
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from difaug.adapters.run import RunView, open_run
from difaug.core import imageio
from difaug.core.errors import DifaugError
from difaug.run import shards

MAX_OPEN_FILES = 16
DRIFT_COLUMN = "drift_iou"
CHOICES = ("first", "random")


class DriftScoreError(DifaugError, ValueError):
    """A drift threshold was asked for, but (some of) the run's aux images have no drift score."""


def drift_scores(paths: list[Path] | list[str], num_rows: int | None = None) -> list[float | None]:
    """`drift_iou` of every row of `paths`, in `read_keys` order (None = not scored). Shards written
    before the column existed count as not scored."""
    scores: list[float | None] = []
    for path in paths:
        with shards.open_shard(path) as pf:
            if DRIFT_COLUMN in pf.schema_arrow.names:
                scores += pf.read(columns=[DRIFT_COLUMN]).column(0).to_pylist()
            else:
                scores += [None] * pf.metadata.num_rows
    if num_rows is not None and len(scores) != num_rows:
        raise ValueError(f"drift scores for {len(scores)} rows, keys for {num_rows}")
    return scores


def drift_keep(scores: list[float | None], min_drift_iou: float | None, run_dir: str | Path) -> list[bool]:
    """Which rows pass `drift_iou >= min_drift_iou` (all when no threshold). Refuses unscored rows:
    a missing score is not a low score, and dropping them silently would look like a strict filter."""
    if min_drift_iou is None:
        return [True] * len(scores)
    if not 0.0 <= min_drift_iou <= 1.0:
        raise DriftScoreError(f"min_drift_iou must be in 0..1 (an IoU), got {min_drift_iou}")
    unscored = sum(s is None for s in scores)
    if unscored:
        raise DriftScoreError(
            f"{run_dir}: {unscored} of {len(scores)} aux images have no drift score (drift_iou is null); "
            f"run `difaug score {run_dir}` first, or leave out the drift threshold"
        )
    return [s >= min_drift_iou for s in scores]  # type: ignore[operator]


def drift_filter(view: RunView, min_drift_iou: float | None) -> list[bool]:
    """Per row of `view.keys`: kept by the threshold? (All, without reading scores, when None.)"""
    if min_drift_iou is None:
        return [True] * view.keys.num_rows
    return drift_keep(drift_scores(view.shard_paths, view.keys.num_rows), min_drift_iou, view.run_dir)


def pick(n: int, k: int | None, choose: str = "first", seed: int | str | None = None) -> list[int]:
    """Positions of the k (all when None) of n items to use: the first k, or k at random — from
    `random.Random(seed)` when a seed is given (the same episode gets the same shots), else from
    the `random` module (which DataLoader reseeds per worker and epoch)."""
    if choose not in CHOICES:
        raise ValueError(f"choose={choose!r} is not one of: {', '.join(CHOICES)}")
    k = n if k is None else min(k, n)
    if choose == "first":
        return list(range(k))
    rng = random.Random(str(seed)) if seed is not None else random
    return sorted(rng.sample(range(n), k))


IMAGE_FORMS = ("rgb", "pil", "cv2")


def check_form(form: str) -> None:
    if form not in IMAGE_FORMS:
        raise ValueError(f"form={form!r} is not one of: {', '.join(IMAGE_FORMS)}")


def decode_as(data: bytes, form: str) -> Any:
    """An encoded aux image in the form a trainer holds a support right after reading its file, so
    the trainer's own transform (its resize included) treats both alike, bit for bit:

    - `rgb`: `H×W×3 uint8` RGB (difaug's decoder);
    - `pil`: a loaded RGB `PIL.Image`, as HSNet / Matcher / DiffewS open supports
      (`Image.open(path)`, `.convert('RGB')`), ready for torchvision's `Resize` + `ToTensor`;
    - `cv2`: `H×W×3 float32` RGB decoded by OpenCV, PFENet / BAM / HDMNet's
      `np.float32(cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))`."""
    if form == "rgb":
        return imageio.load_image(data)
    if form == "pil":
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")  # a loaded copy; RGB files keep their pixels
    check_form(form)
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise imageio.ImageReadError("aux image bytes: OpenCV cannot decode them")
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class AuxKeyError(DifaugError, KeyError):
    """No (or no unique) sample for a support key; the message says what was tried."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SampleInfo:
    """The manifest values of one sample, as stored in its shard rows."""

    sample_id: str
    image: str
    mask: str
    class_id: int
    class_name: str
    dataset: str
    width: int
    height: int


@dataclass(frozen=True)
class _Loc:
    aux_index: int
    shard: int
    group: int
    offset: int  # row inside the row group


def _path_aliases(path: str) -> list[str]:
    """The names a trainer may use for an image, most specific first."""
    p = path.replace("\\", "/")
    norm = posixpath.normpath(p)
    name = posixpath.basename(norm)
    parent = posixpath.basename(posixpath.dirname(norm))
    stem = posixpath.splitext(name)[0]
    out = [path, norm, posixpath.splitext(norm)[0]]
    if parent:
        out += [f"{parent}/{name}", f"{parent}/{stem}"]
    out += [name, stem]
    return list(dict.fromkeys(a for a in out if a))  # dedupe, keep order


class AuxIndex:
    """Lazy map (support image path or sample_id, class_id) → auxiliary images of a run.

    >>> index = AuxIndex("runs/pascal5i-fold0-hed")
    >>> shots = index.aux_images("2007_000032", class_id=1)   # X arrays, H×W×3 uint8, by aux_index
    """

    def __init__(
        self, run_dir: str | Path, *, cache_row_groups: int = 4, min_drift_iou: float | None = None
    ) -> None:
        view = open_run(run_dir)
        self.run_dir = Path(run_dir)
        self.num_aux = view.num_aux
        self.min_drift_iou = min_drift_iou
        keep = drift_filter(view, min_drift_iou)
        self.filtered = 0  # aux images left out by min_drift_iou
        self._paths = [str(p) for p in view.shard_paths]
        self._cache_size = max(1, cache_row_groups)
        self.row_groups_read = 0  # how many row groups were fetched (not counting cache hits)
        self._init_runtime()

        cols = {name: view.keys.column(name).to_pylist() for name in view.keys.column_names}
        self._locs: dict[str, list[_Loc]] = {}
        self._any_loc: dict[str, _Loc] = {}  # a row of every sample, filtered or not: its condition
        self._info: dict[str, SampleInfo] = {}
        for i, sid in enumerate(cols["sample_id"]):
            locs = self._locs.setdefault(sid, [])
            loc = _Loc(cols["aux_index"][i], cols["_shard"][i], cols["_group"][i], cols["_in_group"][i])
            self._any_loc.setdefault(sid, loc)
            if keep[i]:
                locs.append(loc)
            else:
                self.filtered += 1
            if sid not in self._info:
                self._info[sid] = SampleInfo(
                    sid,
                    cols["image"][i],
                    cols["mask"][i],
                    cols["class_id"][i],
                    cols["class_name"][i],
                    cols["dataset"][i],
                    cols["width"][i],
                    cols["height"][i],
                )
        for locs in self._locs.values():
            locs.sort(key=lambda loc: loc.aux_index)

        self._aliases: dict[tuple[str, int], set[str]] = {}
        for sid, info in self._info.items():
            for alias in _path_aliases(info.image):
                self._aliases.setdefault((alias, info.class_id), set()).add(sid)

    # --- pickling for DataLoader workers: file handles and caches are per process ---------------

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        # Open shard files, least recently used first: bounded, since a COCO-20i run has thousands
        # of shards and every handle is a file descriptor.
        self._files: OrderedDict[tuple[int, int], pq.ParquetFile] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int, str], pa.Array] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_lock", "_files", "_groups"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # --- lookup ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._info)

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple) and len(key) == 2:
            try:
                self.sample_id(str(key[0]), key[1])
            except AuxKeyError:
                return False
            return True
        return key in self._info

    def sample_id(self, key: str, class_id: int | None = None) -> str:
        """The sample_id a support key names. `class_id` is the mask value (required for paths)."""
        info = self._info.get(key)
        if info is not None and (class_id is None or info.class_id == class_id):
            return key
        if class_id is None:
            raise AuxKeyError(
                f"{key!r} is not a sample_id of {self.run_dir}; pass class_id to look up by path"
            )
        for alias in _path_aliases(str(key)):
            found = self._aliases.get((alias, int(class_id)))
            if not found:
                continue
            images = {self._info[s].image for s in found}
            if len(images) > 1:
                raise AuxKeyError(
                    f"{key!r} (class {class_id}) is ambiguous in {self.run_dir}: {alias!r} matches "
                    f"{', '.join(sorted(images)[:3])}; pass a longer path or the sample_id"
                )
            return min(found)  # same image and class twice: the first sample_id, deterministically
        raise AuxKeyError(
            f"no aux images for {key!r} with class_id {class_id} in {self.run_dir} "
            f"({len(self)} samples indexed; tried sample_id, path, parent/name, name, stem)"
        )

    def info(self, key: str, class_id: int | None = None) -> SampleInfo:
        return self._info[self.sample_id(key, class_id)]

    def count(self, key: str, class_id: int | None = None) -> int:
        """How many aux images the support has (≤ num_aux when some failed)."""
        return len(self._locs[self.sample_id(key, class_id)])

    # --- image access ----------------------------------------------------------------------------

    def aux_bytes(
        self,
        key: str,
        class_id: int | None = None,
        k: int | None = None,
        *,
        choose: str = "first",
        seed: int | str | None = None,
    ) -> list[bytes]:
        """Encoded aux images (PNG or JPEG as stored), in aux_index order: all, or `k` of them —
        the first k, or k at random (`choose="random"`, reproducible per `seed`, see `pick`)."""
        sid = self.sample_id(key, class_id)
        locs = self._locs[sid]
        chosen = [locs[i] for i in pick(len(locs), k, choose, seed)]
        return [self._group(loc.shard, loc.group, "aux_image")[loc.offset].as_py()["bytes"] for loc in chosen]

    def aux_images(
        self,
        key: str,
        class_id: int | None = None,
        k: int | None = None,
        *,
        form: str = "rgb",
        choose: str = "first",
        seed: int | str | None = None,
    ) -> list[Any]:
        """Decoded aux images at the support's own size: `aux_bytes`'s choice, decoded as `form`
        says (see `decode_as`): `rgb` (`H×W×3 uint8`), `pil` (as HSNet's loaders open a support)
        or `cv2` (as PFENet/BAM/HDMNet's `SemData` reads one: `H×W×3 float32` RGB)."""
        check_form(form)
        return [decode_as(b, form) for b in self.aux_bytes(key, class_id, k, choose=choose, seed=seed)]

    def aux_indices(self, key: str, class_id: int | None = None) -> list[int]:
        return [loc.aux_index for loc in self._locs[self.sample_id(key, class_id)]]

    def condition_image(self, key: str, class_id: int | None = None) -> np.ndarray:
        """The ControlNet condition (at working size) the sample's aux images were generated from."""
        sid = self.sample_id(key, class_id)
        loc = self._any_loc[sid]
        return imageio.load_image(
            self._group(loc.shard, loc.group, "condition_image")[loc.offset].as_py()["bytes"]
        )

    def _open(self, shard: int) -> pq.ParquetFile:
        """The shard's open file (caller holds the lock); at most `MAX_OPEN_FILES` stay open."""
        key = (os.getpid(), shard)
        handle = self._files.get(key)
        if handle is not None:
            self._files.move_to_end(key)
            return handle
        handle = shards.open_shard(self._paths[shard])
        self._files[key] = handle
        while len(self._files) > MAX_OPEN_FILES:
            _, evicted = self._files.popitem(last=False)
            evicted.close()
        return handle

    def _group(self, shard: int, group: int, column: str) -> pa.Array:
        key = (shard, group, column)
        with self._lock:
            cached = self._groups.get(key)
            if cached is not None:
                self._groups.move_to_end(key)
                return cached
            handle = self._open(shard)
            array = handle.read_row_group(group, columns=[column]).column(0).combine_chunks()
            self.row_groups_read += 1
            self._groups[key] = array
            while len(self._groups) > self._cache_size:
                self._groups.popitem(last=False)
            return array
