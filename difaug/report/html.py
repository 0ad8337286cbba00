"""`difaug inspect --html`: one self-contained page (images embedded as base64 PNG) of a run.

The page shows the `RunReport` (totals, config, invalid shards, failures, seconds by stage, per
shard, classes), the contact-sheet rows (`difaug.report.sheets`) and, as `extra`, the drift-score
section (`scores_html`). Manifest text goes through `display_text` and is escaped, so a hostile
class name can neither break a line nor inject markup.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from difaug.core import fsio, imageio, sheet
from difaug.core.text import display_text
from difaug.report.data import SCORE_BINS, TASK_TOTAL_LABELS, RunReport, ScoreStats
from difaug.report.overlay import EXPLAIN_HINT, OVERLAY_LEGEND
from difaug.report.sheets import MASK_COLUMN, SheetRow, column_labels, lowest_labels
from difaug.report.text import bin_label, human_bytes, regeneration_rows

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;background:#fafafa}"
    "table{border-collapse:collapse;margin:0 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    ".grid td{padding:2px}.grid img{display:block}"
)
_NONE = "<p>none</p>"


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumb_uri(image: np.ndarray | None, thumb: int, nearest: bool) -> str:
    return _png_uri(imageio.encode_png(np.asarray(sheet.thumbnail(image, thumb, nearest))))


def _e(value: object) -> str:
    """Manifest text for the page: one line without control or direction marks, then escaped."""
    return html.escape(display_text(value, 1000))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """A table; `headers` None: a key–value table, with no (empty) header row."""
    head = "".join(f"<th>{_e(str(h))}</th>" for h in headers or ())
    body = "".join(
        "<tr>" + "".join(f"<td>{_e('' if v is None else str(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _table_or_none(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return _table(headers, rows) if rows else _NONE


def _grid(
    first_header: str,
    rows: Sequence[SheetRow],
    num_aux: int,
    thumb: int,
    with_class_id: bool,
    labels: Sequence[str] | None = None,
) -> str:
    """The sample grid: a caption cell, then one image cell per column of the contact sheet
    (`labels`, `column_labels(num_aux)` unless given)."""
    labels = labels or column_labels(num_aux)
    head = f"<tr><th>{_e(first_header)}</th>" + "".join(f"<th>{_e(c)}</th>" for c in labels)
    body = []
    for row in rows:
        cells = "".join(
            f'<td><img src="{_thumb_uri(a, thumb, c == MASK_COLUMN)}" width="{thumb}" height="{thumb}"></td>'
            for c, a in enumerate(row.cells(num_aux))
        )
        cls = f"{_e(row.class_name)} ({row.class_id})" if with_class_id else _e(row.class_name)
        body.append(f"<tr><th>{_e(row.sample_id)}<br><small>{cls}</small></th>{cells}</tr>")
    return f"<table class='grid'><thead>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _totals(report: RunReport) -> list[tuple[str, Any]]:
    return [
        ("manifest rows (planned)", report.manifest_rows),
        ("aux images (shard rows)", report.rows),
        ("samples with images", report.samples),
        ("classes", len(report.classes)),
        ("aux per sample (X)", report.num_aux),
        ("failed rows", len(report.failures)),
        ("shards finished / planned", f"{report.shards_done} / {report.shards_planned}"),
        ("invalid shards (redone by the fix below)", len(report.invalid_shards)),
        ("disk (run dir / shards)", f"{human_bytes(report.disk_bytes)} / {human_bytes(report.shard_bytes)}"),
        ("wall time (s)", _fmt(report.wall_seconds)),
        ("images/s overall", _fmt(report.images_per_s)),
        (f"{report.device_label} (generate)", _fmt(report.device_seconds)),
    ]


def _sections(report: RunReport) -> list[str]:
    """The report's tables, each under its heading."""
    invalid = _NONE
    if report.invalid_shards:
        invalid = (
            _table(("shard", "reason"), list(report.invalid_shards.items())) + f"<p>fix: {_e(report.fix)}</p>"
        )
    config = list(report.config.items()) + [
        (f"{k} (shards)", ", ".join(v)) for k, v in report.provenance.items()
    ]
    failed = [(f.row, f.sample_id, f.stage, f.reason, f.shard) for f in report.failures]
    task_totals = [(TASK_TOTAL_LABELS[k], _fmt(v)) for k, v in report.task_seconds.items()]
    per_shard = [
        (t.shard, t.images, _fmt(t.seconds), _fmt(t.device_seconds), _fmt(t.images_per_s))
        for t in report.per_shard
    ]
    return [
        "<h2>Totals</h2>",
        _table(None, _totals(report)),
        *(
            ["<h2>Regeneration</h2>", _table(None, regeneration_rows(report.regeneration))]
            if report.regeneration
            else []
        ),
        "<h2>Configuration</h2>",
        _table(("key", "value"), config),
        "<h2>Invalid shards</h2>",
        invalid,
        "<h2>Failures by reason</h2>",
        _table_or_none(("reason", "rows"), list(report.failures_by_reason.items())),
        "<h2>Failed rows</h2>",
        _table_or_none(("row", "sample_id", "stage", "reason", "shard"), failed),
        "<h2>Seconds by stage</h2>",
        _table_or_none(("stage", "seconds"), [(k, _fmt(v)) for k, v in report.stage_seconds.items()]),
        "<h2>Task totals (overlap the stages)</h2>",
        _table_or_none(("total", "seconds"), task_totals),
        "<h2>Per shard</h2>",
        _table(("shard", "images", "seconds", report.device_label, "images/s"), per_shard),
        "<h2>Classes</h2>",
        _table(("class", "samples"), list(report.classes.items())),
    ]


def render_html(report: RunReport, rows: Sequence[SheetRow], thumb: int = 192, extra: str = "") -> str:
    """A self-contained page: totals, timings, config, failures, and the sample grid."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>difaug run {_e(report.run_dir)}</title><style>",
        _STYLE,
        "</style></head><body>",
        f"<h1>difaug run <code>{_e(report.run_dir)}</code></h1>",
        *_sections(report),
        f"<h2>Samples ({len(rows)} shown)</h2>",
        _grid("sample", rows, report.num_aux, thumb, with_class_id=True),
        extra,  # e.g. scores_html(...)
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_html(
    out: str | Path, report: RunReport, rows: Sequence[SheetRow], thumb: int = 192, extra: str = ""
) -> Path:
    """Write the browsable page; images are embedded, so the file can be moved or mailed alone."""
    return fsio.write_text(out, render_html(report, rows, thumb, extra))


def histogram_image(stats: ScoreStats, width: int = 360, height: int = 160) -> np.ndarray:
    """A bar chart of the drift-score histogram (RGB uint8), for the HTML page."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11)
    left, bottom, top_pad = 8, height - 18, 8
    bar_w = (width - 2 * left) / SCORE_BINS
    top = max(stats.bins, default=0) or 1
    for i, n in enumerate(stats.bins):
        h = (bottom - top_pad) * n / top
        x0 = left + i * bar_w
        draw.rectangle([x0 + 1, bottom - h, x0 + bar_w - 1, bottom], fill=(70, 110, 190))
        draw.text((x0 + 2, bottom + 3), bin_label(i), fill=(0, 0, 0), font=font)
    return np.asarray(img)


def scores_html(
    stats: ScoreStats, lowest: Sequence[SheetRow], thumb: int = 160, explained: bool = False
) -> str:
    """The HTML section of the drift scores: numbers, histogram, lowest-scoring images (with their
    drift overlays when `explained`, `difaug.report.overlay`; else how to get them)."""
    if not stats.scored:
        return "<h2>Drift scores</h2><p>none (run <code>difaug score RUN</code>)</p>"
    numbers = [("scored / rows", f"{stats.scored} / {stats.rows}"), ("mean drift_iou", _fmt(stats.mean, 3))]
    numbers += [(k, _fmt(v, 3)) for k, v in stats.quantiles.items()]
    numbers.append(("mean segments", _fmt(stats.mean_segments, 1)))
    hist = _png_uri(imageio.encode_png(histogram_image(stats)))
    return "\n".join(
        [
            "<h2>Drift scores (DiffSeg IoU with the support mask)</h2>",
            _table(None, numbers),
            f"<img alt='drift_iou histogram' src='{hist}'>",
            f"<h2>Lowest drift scores ({len(lowest)})</h2>",
            f"<p>{_e(OVERLAY_LEGEND if explained else EXPLAIN_HINT)}</p>",
            _grid("aux image", lowest, 1, thumb, with_class_id=False, labels=lowest_labels(explained)),
        ]
    )
