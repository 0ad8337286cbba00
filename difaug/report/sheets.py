"""Contact sheets of a run: one row per sample — support | mask | condition | aux 1..X.

`sheet_rows(...)` makes a deterministic choice of samples (the same run always shows the same ones:
samples are ordered by a hash of their sample_id, so the choice is spread over classes and shards
yet stable across reruns and resumes) and reads their images; `lowest_sheet_rows(...)` does the same
for the lowest drift scores, each with its drift overlay when explained (`difaug.report.overlay`). `contact_sheet` draws them with `difaug.core.sheet`; the HTML page
(`difaug.report.html`) shows the same rows. `write_segment_sheet` is `difaug segment`'s sheet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from difaug.adapters.index import AuxIndex
from difaug.core import fsio, imageio, sheet
from difaug.core.classes import IGNORE_VALUE
from difaug.core.text import display_text
from difaug.report.data import ScoreStats, lowest_images

if TYPE_CHECKING:
    from difaug.report.overlay import Explained

INSPECT_BOTTOM = 2 * sheet.PAD  # below the last line of inspect's and segment's sheets
MASK_COLUMN = 1  # label maps are thumbnailed with nearest neighbour, so edges stay hard

_T = TypeVar("_T")


@dataclass
class SheetRow:
    """One sample of the contact sheet: its cells as full-size arrays (None = unavailable)."""

    sample_id: str
    class_name: str
    class_id: int
    support: np.ndarray | None
    mask: np.ndarray | None  # visualised: class white, ignore grey, rest black
    condition: np.ndarray | None
    aux: list[np.ndarray]

    def cells(self, num_aux: int) -> list[np.ndarray | None]:
        return [self.support, self.mask, self.condition, *self.aux, *([None] * (num_aux - len(self.aux)))]


def choose_samples(sample_ids: Sequence[str], max_samples: int) -> list[str]:
    """A deterministic, well-spread choice: the `max_samples` ids with the smallest sha256."""
    unique = sorted(set(sample_ids), key=lambda s: (hashlib.sha256(s.encode()).hexdigest(), s))
    return unique[: max(0, max_samples)]


def column_labels(num_aux: int) -> list[str]:
    return ["support", "mask", "condition", *(f"aux {i + 1}" for i in range(num_aux))]


def lowest_labels(explained: bool) -> list[str]:
    """The lowest-score sheet's columns: one aux image, then its segments when explained."""
    return ["support", "mask", "condition", "aux image", *(["why (segments)"] if explained else [])]


def mask_preview(mask: np.ndarray, class_id: int) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask == IGNORE_VALUE] = 128
    out[mask == class_id] = 255
    return out


def _or_none(load: Callable[[str], _T], path: str) -> _T | None:
    try:
        return load(path)
    except (imageio.ImageReadError, OSError, ValueError):
        return None  # the support may live on another machine: show an empty cell, not an error


def _sheet_row(index: AuxIndex, sample_id: str, label: str, aux: list[np.ndarray]) -> SheetRow:
    """The row of `sample_id`, captioned `label`, with these aux images; support and mask are read
    from their paths, the condition from the shards."""
    info = index.info(sample_id)
    mask = _or_none(imageio.load_mask, info.mask)
    return SheetRow(
        label,
        info.class_name,
        info.class_id,
        _or_none(imageio.load_image, info.image),
        None if mask is None else mask_preview(mask, info.class_id),
        index.condition_image(sample_id),
        aux,
    )


def sheet_rows(run_dir: str | Path, max_samples: int = 8, index: AuxIndex | None = None) -> list[SheetRow]:
    """The samples of the contact sheet with their images."""
    index = index or AuxIndex(run_dir)
    return [
        _sheet_row(index, sid, sid, index.aux_images(sid)) for sid in choose_samples(list(index), max_samples)
    ]


def lowest_sheet_rows(
    run_dir: str | Path,
    stats: ScoreStats,
    index: AuxIndex | None = None,
    explained: Mapping[str, Explained] | None = None,
) -> list[SheetRow]:
    """Contact-sheet rows for the lowest-scoring aux images: support | mask | condition | that aux,
    and with `explained` (`difaug.report.overlay.explain_lowest`) its drift overlay after it."""
    index = index or AuxIndex(run_dir)
    out = []
    for low in lowest_images(stats, index):
        label = f"{low.key}  drift_iou {low.drift_iou:.2f}"
        if low.key in stats.lowest_attempts:  # a regenerating run: the kept attempt (the row's `attempt`)
            kept, made = stats.lowest_attempts[low.key]
            label += f"  attempt {kept} ({made} generated)"
        cells = [low.image] if low.image is not None else []
        if explained is not None and low.key in explained:
            label += f"  ({explained[low.key].caption()})"
            cells.append(explained[low.key].overlay)
        out.append(_sheet_row(index, low.sample_id, label, cells))
    return out


def sheet_size(num_rows: int, num_aux: int, thumb: int) -> tuple[int, int]:
    """(width, height) of a contact sheet with `num_rows` samples and X = `num_aux`."""
    return sheet.sheet_size(num_rows, 3 + num_aux, thumb, bottom=INSPECT_BOTTOM)


def contact_sheet(
    rows: Sequence[SheetRow], num_aux: int, thumb: int = 128, labels: Sequence[str] | None = None
) -> np.ndarray:
    """Draw the sheet (`difaug.core.sheet`): a header of column labels (`column_labels(num_aux)`
    unless given), then per sample a caption and its cells."""
    lines = [
        sheet.SheetLine(
            row.cells(num_aux),
            f"{display_text(row.sample_id)}  ·  {display_text(row.class_name)} ({row.class_id})",
            nearest={MASK_COLUMN},
        )
        for row in rows
    ]
    return sheet.draw_sheet(lines, thumb, labels=labels or column_labels(num_aux), bottom=INSPECT_BOTTOM)


def write_sheet(
    out: str | Path,
    rows: Sequence[SheetRow],
    num_aux: int,
    thumb: int = 128,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write the contact sheet as a PNG of `sheet_size(len(rows), num_aux, thumb)`."""
    return fsio.write_bytes(out, imageio.encode_png(contact_sheet(rows, num_aux, thumb, labels)))


def write_segment_sheet(
    out: str | Path, previews: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]], thumb: int = 128
) -> Path:
    """`difaug segment`'s sheet: image | ground-truth mask | DiffSeg segments, one row per image."""
    from difaug.diffusion.segment_eval import colourise

    lines = [
        sheet.SheetLine(
            (
                image,
                None
                if truth is None
                else colourise(np.where(truth == IGNORE_VALUE, 0, truth).astype(np.int64)),
                colourise(labels),
            ),
            nearest={1, 2},
        )
        for image, truth, labels in previews
    ]
    drawn = sheet.draw_sheet(
        lines, thumb, labels=("image", "mask", "DiffSeg segments"), captions=False, bottom=INSPECT_BOTTOM
    )
    return fsio.write_bytes(out, imageio.encode_png(drawn))
