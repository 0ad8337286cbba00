"""`difaug.report.sheets`: the choice of samples, their rows and the contact sheet's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _runs import PASCAL_SPECS, SampleSpec, make_run

from difaug.report import sheets
from difaug.report.data import ScoreStats


def test_sheet_size_and_cells(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS, num_aux=3)
    rows = sheets.sheet_rows(run.run_dir, max_samples=2)
    assert len(rows) == 2
    sheet = sheets.contact_sheet(rows, 3, thumb=32)
    assert sheet.shape == (sheets.sheet_size(2, 3, 32)[1], sheets.sheet_size(2, 3, 32)[0], 3)
    row = rows[0]
    s = run.sample(row.sample_id)
    assert row.support is not None and row.support.shape[:2] == row.mask.shape[:2]
    assert set(np.unique(row.mask)) <= {0, 128, 255} and (row.mask == 255).any()
    np.testing.assert_array_equal(row.condition, run.conditions[s.sample_id])
    for want, have in zip(run.aux[s.sample_id], row.aux, strict=True):
        np.testing.assert_array_equal(have, want)


def test_lowest_rows_hold_the_one_aux_image_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=3)
    sid = run.samples[1].sample_id
    stats = ScoreStats(rows=6, scored=1, mean=0.1, quantiles={}, bins=[], mean_segments=None, lowest=[])
    stats.lowest = [(f"{sid}/2", 0.125)]
    (row,) = sheets.lowest_sheet_rows(run.run_dir, stats)
    assert row.sample_id == f"{sid}/2  drift_iou 0.12" and len(row.aux) == 1
    np.testing.assert_array_equal(row.aux[0], run.aux[sid][2])
    assert len(row.cells(1)) == 4


def test_sample_choice_is_deterministic() -> None:
    ids = [f"s{i}" for i in range(50)]
    first = sheets.choose_samples(ids, 5)
    assert first == sheets.choose_samples(list(reversed(ids)), 5) and len(set(first)) == 5
    assert sheets.choose_samples(ids + ids, 5) == first
    assert sheets.choose_samples(ids, 100) == sheets.choose_samples(ids, 50)


def test_missing_support_files_leave_empty_cells(tmp_path: Path) -> None:
    run = make_run(tmp_path, [SampleSpec("x", 3, "cat")], num_aux=1)
    Path(run.samples[0].image).unlink()  # the support lives on another machine
    rows = sheets.sheet_rows(run.run_dir)
    assert rows[0].support is None and rows[0].mask is not None
    drawn = sheets.contact_sheet(rows, 1, thumb=24)
    assert drawn.shape[:2] == sheets.sheet_size(1, 1, 24)[::-1]


def test_sheet_size_formula_unchanged() -> None:
    """The inspect sheet keeps its geometry: header, per sample caption + cells + PAD, then PAD."""
    assert sheets.sheet_size(3, 2, 40) == (4 + 5 * (40 + 4), 18 + 3 * (14 + 40 + 4) + 4)
