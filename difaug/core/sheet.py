"""Contact sheets: a grid of labelled thumbnails, the one renderer of every sheet difaug draws.

`draw_sheet` lays out lines of cells (any H×W×3 / H×W arrays; None = an empty, crossed cell) as
square thumbnails under an optional header of column labels, each line with an optional caption —
in a strip above its cells, or over its first cell. Used by `difaug inspect` (support | mask |
condition | aux 1..X, `difaug.report.data`), `difaug conditions` (support | mask overlay | condition,
`difaug.conditions.preview`) and `difaug segment` (image | mask | segments, `difaug.report.data`).
Captions are manifest text: shown as one visible line (`difaug.core.text.display_text`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from difaug.core import imageio
from difaug.core.text import display_text

PAD = 4  # between cells and lines, and the default margin around the sheet
HEADER = 18  # height of the column-label strip
CAPTION = 14  # height of a caption strip above a line's cells
BACKGROUND = (24, 24, 24)
CELL = (48, 48, 48)  # an empty cell, and the letterbox around a thumbnail
TEXT = (230, 230, 230)


@dataclass
class SheetLine:
    """One line of a sheet: its cells (full-size arrays; None = unavailable) and a caption."""

    cells: Sequence[np.ndarray | None]
    caption: str = ""
    # Columns holding label maps: thumbnailed with nearest neighbour, so edges stay hard.
    nearest: Collection[int] = field(default_factory=frozenset)


def _font() -> Any:
    return ImageFont.load_default(size=11)


def thumbnail(arr: np.ndarray | None, thumb: int, nearest: bool = False) -> Image.Image:
    """`arr` scaled to fit a `thumb`² cell, centred; None → an empty cell with a diagonal."""
    cell = Image.new("RGB", (thumb, thumb), CELL)
    if arr is None:
        ImageDraw.Draw(cell).line([(0, 0), (thumb, thumb)], fill=(90, 90, 90))
        return cell
    h, w = arr.shape[:2]
    scale = thumb / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(imageio.resize(arr, size, nearest=nearest)).convert("RGB")
    cell.paste(img, ((thumb - size[0]) // 2, (thumb - size[1]) // 2))
    return cell


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def sheet_size(
    lines: int,
    columns: int,
    thumb: int,
    *,
    header: bool = True,
    captions: bool = True,
    margin: int = PAD,
    bottom: int | None = None,
) -> tuple[int, int]:
    """(width, height) of a sheet of `lines` × `columns` cells. `margin` around the sheet (the
    header strip holds its own top margin), `bottom` below the last line (default `margin`)."""
    width = 2 * margin + columns * thumb + (columns - 1) * PAD
    line_h = (CAPTION if captions else 0) + thumb
    bottom = margin if bottom is None else bottom
    height = (HEADER if header else margin) + lines * line_h + max(0, lines - 1) * PAD + bottom
    return width, max(1, height)


def draw_sheet(
    lines: Sequence[SheetLine],
    thumb: int = 128,
    *,
    labels: Sequence[str] = (),
    columns: int | None = None,
    captions: bool = True,
    margin: int = PAD,
    bottom: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """The sheet as an RGB array of `sheet_size(...)`. `labels`: column labels in a header strip
    (no header when empty); `captions=True`: each line's caption in a strip above its cells,
    False: drawn over its first cell on a dark box (the sheet stays `thumb`-high per line)."""
    columns = columns or max([len(labels), *(len(line.cells) for line in lines)], default=1)
    width, height = sheet_size(
        len(lines), columns, thumb, header=bool(labels), captions=captions, margin=margin, bottom=bottom
    )
    sheet = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    top = margin
    if labels:
        for c, label in enumerate(labels):
            draw.text(
                (margin + c * (thumb + PAD), 3), fit_text(draw, label, thumb, font), fill=TEXT, font=font
            )
        top = HEADER
    for line in lines:
        caption = display_text(line.caption) if line.caption else ""
        if captions:
            if caption:
                draw.text(
                    (margin, top), fit_text(draw, caption, width - 2 * margin, font), fill=TEXT, font=font
                )
            top += CAPTION
        for c in range(columns):
            arr = line.cells[c] if c < len(line.cells) else None
            sheet.paste(thumbnail(arr, thumb, nearest=c in line.nearest), (margin + c * (thumb + PAD), top))
        if caption and not captions:
            text = fit_text(draw, caption, thumb - 6, font)
            box = draw.textbbox((margin + 3, top + 2), text, font=font)
            draw.rectangle((margin, top, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
            draw.text((margin + 3, top + 2), text, fill=(255, 255, 255), font=font)
        top += thumb + PAD
    return np.asarray(sheet)
