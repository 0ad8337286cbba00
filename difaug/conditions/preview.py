"""Write the conditions of a manifest to PNG files plus a contact sheet (`difaug conditions`).

`write_conditions` loads samples, computes their conditions in batches, writes
`OUT/{safe sample_id}.png` at the working size (`difaug.core.names.plain_stem`) and
`OUT/contact_sheet.png` (support | mask overlay | condition, one row per sample, square thumbnails
of a fixed height, drawn by `difaug.core.sheet`). A row that cannot be loaded or
conditioned becomes a `RowProblem` (row, file, reason); the others go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difaug.conditions import Condition, ConditionInput, SampleLoadError, conditions_or_errors, load_input
from difaug.core import fsio, imageio
from difaug.core.classes import IGNORE_VALUE
from difaug.core.geometry import ConditionError
from difaug.core.names import plain_stem
from difaug.core.sheet import SheetLine, draw_sheet
from difaug.inputs.manifest import RowProblem, Sample, repeated_ids

SHEET_NAME = "contact_sheet"
THUMB_HEIGHT = 128
DEFAULT_SHEET_ROWS = 64


@dataclass
class PreviewResult:
    written: dict[str, Path] = field(default_factory=dict)  # sample_id → file
    problems: list[RowProblem] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)
    sheet: Path | None = None


def output_names(samples: Iterable[Sample]) -> dict[str, str]:
    """`{sample_id: file stem}`, unique and never the contact sheet's name.

    Distinct ids can sanitise to the same stem (`a/b`, `a_b`); later ones get `-r{row}` appended,
    so the names depend only on the manifest."""
    taken = {SHEET_NAME}
    out: dict[str, str] = {}
    for s in samples:
        stem = plain_stem(s.sample_id)
        if stem.lower() in taken:
            stem = f"{stem}-r{s.row}"
        n = 2
        base = stem
        while stem.lower() in taken:  # pathological ids; keeps names unique on case-folding file systems
            stem = f"{base}-{n}"
            n += 1
        taken.add(stem.lower())
        out[s.sample_id] = stem
    return out


def mask_overlay(image: np.ndarray, mask: np.ndarray, class_id: int) -> np.ndarray:
    """The image with the foreground tinted red and 255 ("ignore") pixels tinted white."""
    out = image.astype(np.float32)
    fg = mask == class_id
    ignore = (mask == IGNORE_VALUE) & ~fg
    out[fg] = out[fg] * 0.45 + np.array([255, 0, 0], np.float32) * 0.55
    out[ignore] = out[ignore] * 0.4 + 255 * 0.6
    return out.round().clip(0, 255).astype(np.uint8)


def sheet_line(item: ConditionInput, condition: np.ndarray) -> SheetLine:
    """support | mask overlay | condition, captioned with the sample id."""
    overlay = mask_overlay(item.image, item.mask, item.sample.class_id)
    return SheetLine((item.image, overlay, condition), item.sample.sample_id)


def contact_sheet(lines: Sequence[SheetLine], thumb: int = THUMB_HEIGHT) -> np.ndarray:
    """The lines on white, `thumb`-high each, 4 px apart, the sample id over the first cell
    (`difaug.core.sheet.draw_sheet`)."""
    if not lines:
        return np.full((thumb, thumb, 3), 255, np.uint8)
    return draw_sheet(lines, thumb, captions=False, margin=0, background=(255, 255, 255))


def _problem(sample: Sample, error: Exception) -> RowProblem:
    if isinstance(error, SampleLoadError):
        return RowProblem(sample.row, error.column, error.file, str(error), sample.sample_id)
    reason = f"condition failed: {type(error).__name__}: {error}"
    return RowProblem(sample.row, "condition", sample.image, reason, sample.sample_id)


def _run_batch(condition: Condition, batch: list[ConditionInput]) -> list[np.ndarray | BaseException]:
    """Conditions for a batch; one bad sample costs one row (`conditions_or_errors`). Unlike in
    the shard task, a RuntimeError (from the HED network) is a row problem too: a preview has no
    task retry that could fix it."""
    return conditions_or_errors(condition, batch, (ConditionError, ValueError, RuntimeError))


def write_conditions(
    samples: Sequence[Sample],
    condition: Condition,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    sheet_rows: int = DEFAULT_SHEET_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> PreviewResult:
    """Write `out_dir/{sample}.png` for every sample and `out_dir/contact_sheet.png` (first
    `sheet_rows` samples). `on_progress(n)` is called with the number of samples just finished."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PreviewResult()
    # One file per sample_id: a repeated id is reported, not silently written over its first row.
    repeated = repeated_ids(samples)
    result.problems += [RowProblem(s.row, "sample_id", "", reason, s.sample_id) for s, reason in repeated]
    later = {s.row for s, _ in repeated}
    samples = [s for s in samples if s.row not in later]
    names = output_names(samples)
    rows: list[SheetLine] = []
    for start in range(0, len(samples), max(1, batch_size)):
        chunk = samples[start : start + max(1, batch_size)]
        loaded: list[ConditionInput] = []
        for sample in chunk:
            try:
                loaded.append(load_input(sample))
            except SampleLoadError as e:
                result.problems.append(_problem(sample, e))
        for item, cond in zip(loaded, _run_batch(condition, loaded), strict=True):
            if isinstance(cond, Exception):
                result.problems.append(_problem(item.sample, cond))
                continue
            path = fsio.write_bytes(out / f"{names[item.sample.sample_id]}.png", imageio.encode_png(cond))
            result.written[item.sample.sample_id] = path
            if len(rows) < sheet_rows:
                rows.append(sheet_line(item, cond))
        if on_progress is not None:
            on_progress(len(chunk))
    result.sheet = fsio.write_bytes(out / f"{SHEET_NAME}.png", imageio.encode_png(contact_sheet(rows)))
    result.fallbacks = Counter(condition.fallbacks)
    result.problems.sort(key=lambda p: p.row)
    return result
