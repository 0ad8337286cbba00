"""`difaug.core.sheet`: the one contact-sheet renderer (inspect, conditions, segment)."""

from __future__ import annotations

import numpy as np

from difaug.core.sheet import BACKGROUND, HEADER, PAD, SheetLine, draw_sheet, sheet_size


def _image(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_geometry_with_header_and_captions() -> None:
    lines = [SheetLine([_image(30, 60, 200), None, _image(64, 32, 90)], "a sample"), SheetLine([None], "b")]
    sheet = draw_sheet(lines, 32, labels=("x", "y", "z"))
    assert sheet.shape == (sheet_size(2, 3, 32)[1], sheet_size(2, 3, 32)[0], 3)
    assert sheet_size(2, 3, 32) == (PAD + 3 * (32 + PAD), HEADER + 2 * (14 + 32) + PAD + PAD)
    assert tuple(sheet[-1, -1]) == BACKGROUND
    # The first cell's picture is there, letterboxed in the middle of its square.
    top = HEADER + 14
    assert tuple(sheet[top + 16, PAD + 16]) == (200, 200, 200)


def test_captions_over_the_first_cell_keep_lines_thumb_high() -> None:
    lines = [SheetLine([_image(40, 40, 10)] * 3, f"row {i}") for i in range(3)]
    sheet = draw_sheet(lines, 40, captions=False, margin=0, background=(255, 255, 255))
    assert sheet.shape == (3 * 40 + 2 * PAD, 3 * 40 + 2 * PAD, 3)
    assert (sheet[40:44] == 255).all()  # the gap between lines
    # The caption is drawn on the first cell (white text on a black box), not beside it.
    assert (sheet[2:12, 2:30] > 200).any() and not (sheet[30:40, 45:80] > 200).any()


def test_label_maps_keep_hard_edges_with_nearest() -> None:
    labels = np.zeros((8, 8, 3), np.uint8)
    labels[:, 4:] = 255
    soft = draw_sheet([SheetLine([labels])], 64, captions=False, margin=0)
    hard = draw_sheet([SheetLine([labels], nearest={0})], 64, captions=False, margin=0)
    assert set(np.unique(hard)) <= {0, 255} and len(np.unique(soft)) > 2
