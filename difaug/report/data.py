"""`difaug inspect`: what a run holds, how fast it was made, what failed, and what it looks like.

`summarise(run_dir)` reads the plan, the stats markers and the shards' key columns (no image
bytes) into a `RunReport`. `contact_sheet(...)` draws one row per sample — support | mask |
condition | aux 1..X — for a deterministic choice of samples (the same run always shows the same
ones: samples are ordered by a hash of their sample_id, so the choice is spread over classes and
shards yet stable across reruns and resumes). `write_html(...)` writes a self-contained page
(images embedded as base64 PNG) with the same content.

Only verified shards count (`difaug.adapters.run.open_run`); the others are reported as invalid
with the reason and the command that redoes them. Marker fields used: `shard`, `images`,
`failures[{row, sample_id, stage, reason}]`, `seconds{generate, <stage>…}` (stages only),
`load_seconds`/`wall_seconds`/`cpu_seconds` (the task's totals),
`started`/`finished` (ISO timestamps).
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from difaug.adapters.index import AuxIndex
from difaug.adapters.run import (
    Failure,
    RunView,
    marker_number,
    marker_shard,
    open_run,
    plan_shards,
)
from difaug.core import fsio, imageio, sheet
from difaug.core.classes import IGNORE_VALUE
from difaug.core.config import DEFAULT_CONTROLNETS
from difaug.core.text import display_text
from difaug.run import shards

CONFIG_KEYS = (
    "condition",
    "condition_style",
    "num_aux",
    "seed",
    "resolution",
    "model",
    "base_model",
    "controlnet",
    "scheduler",
    "steps",
    "guidance_scale",
    "controlnet_scale",
    "lcm_lora",
    "image_format",
    "shard_size",
)
# The provenance columns (`shards.PROVENANCE_COLUMNS`) that say *which* models and hardware made
# the images: listed with the config. The numeric ones (steps, guidance, …) repeat the config.
MODEL_PROVENANCE_COLUMNS = tuple(
    c
    for c in shards.PROVENANCE_COLUMNS
    if c in ("base_model", "controlnet_model", "scheduler", "dtype", "device")
)
# A task's totals (marker fields, `rundir.ShardStats`): they overlap the stages, never summed with them.
TASK_TOTALS = {"load": "load_seconds", "wall": "wall_seconds", "cpu": "cpu_seconds"}
DEVICE_STAGE = "generate"  # the stage that holds the GPU (conditions may too; listed separately)

TASK_TOTAL_LABELS = {
    "load": "model loading",
    "wall": "task wall time",
    "cpu": "worker CPU (all threads; shared by overlapping shards)",
}

INSPECT_BOTTOM = 2 * sheet.PAD  # below the last line of inspect's and segment's sheets (their size as before)
MASK_COLUMN = 1  # label maps are thumbnailed with nearest neighbour, so edges stay hard


@dataclass(frozen=True)
class ShardTiming:
    shard: str
    images: int
    seconds: float | None  # the task's own wall time (marker `wall_seconds`)
    device_seconds: float | None  # seconds.generate
    images_per_s: float | None


@dataclass
class RunReport:
    run_dir: str
    manifest_rows: int | None  # rows the plan covers
    rows: int  # aux images in finished shards (one shard row each)
    samples: int  # samples with images
    classes: dict[str, int]  # class_name → samples with images
    num_aux: int
    shards_done: int
    shards_planned: int
    unfinished_shards: list[str]
    failures: list[Failure]
    failures_by_reason: dict[str, int]
    failures_by_stage: dict[str, int]
    wall_seconds: float | None  # first shard start → last shard finish
    images_per_s: float | None  # rows / wall_seconds
    device_seconds: float  # sum of seconds.generate: the GPU-seconds the images cost
    stage_seconds: dict[str, float]  # every stage's seconds summed over shards (stages only)
    # The tasks' totals summed over shards, apart from the stages they overlap: "load" (models),
    # "wall" (task start → marker), "cpu" (worker process CPU during the tasks: two overlapping
    # tasks of one worker both count the seconds they share)
    task_seconds: dict[str, float]
    per_shard: list[ShardTiming]
    disk_bytes: int  # everything in the run dir
    shard_bytes: int  # the Parquet shards alone
    config: dict[str, Any]
    provenance: dict[str, list[str]] = field(default_factory=dict)  # distinct values in the shards
    # class name → samples whose seg condition used the fallback colour (no ADE20K mapping)
    condition_fallbacks: dict[str, int] = field(default_factory=dict)
    # shard name → why its marker or file does not verify (not counted anywhere above)
    invalid_shards: dict[str, str] = field(default_factory=dict)
    fix: str = ""  # the command that redoes invalid and unfinished shards

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- totals and timings ------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:  # a temp file renamed away meanwhile
                continue
    return total


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _wall_seconds(stats: Sequence[dict[str, Any]]) -> float | None:
    starts = [t for t in (_parse_time(m.get("started")) for m in stats) if t is not None]
    ends = [t for t in (_parse_time(m.get("finished")) for m in stats) if t is not None]
    if not starts or not ends:
        return None
    try:
        return max(0.0, (max(ends) - min(starts)).total_seconds())
    except TypeError:  # naive and aware timestamps mixed
        return None


def _config_summary(view: RunView) -> dict[str, Any]:
    cfg = view.config
    out = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    # "" means the default ControlNet for the condition, unless a model bundle supplies one.
    if not out.get("controlnet") and not cfg.get("model") and cfg.get("condition") in DEFAULT_CONTROLNETS:
        out["controlnet"] = DEFAULT_CONTROLNETS[cfg["condition"]]
    return out


def _provenance(view: RunView) -> dict[str, list[str]]:
    values: dict[str, set[str]] = {c: set() for c in MODEL_PROVENANCE_COLUMNS}
    for path in view.shard_paths:
        table = shards.read_shard(path, MODEL_PROVENANCE_COLUMNS)  # dictionary-encoded: tiny
        for c in MODEL_PROVENANCE_COLUMNS:
            values[c].update(str(v) for v in table.column(c).unique().to_pylist())
    return {c: sorted(v) for c, v in values.items() if v}


def summarise(run_dir: str | Path) -> RunReport:
    """Counts, failures, timings, disk use and config of a run, from its plan/markers/key columns."""
    view = open_run(run_dir)
    keys = view.keys
    per_class: dict[str, set[str]] = {}
    for sid, name in zip(
        keys.column("sample_id").to_pylist(), keys.column("class_name").to_pylist(), strict=True
    ):
        per_class.setdefault(name, set()).add(sid)

    per_shard, fallbacks = [], Counter[str]()
    stage_seconds, task_seconds = Counter[str](), Counter[str]()
    for i, marker in enumerate(view.stats):
        if isinstance(marker.get("fallbacks"), dict):
            fallbacks.update({str(k): int(v) for k, v in marker["fallbacks"].items()})
        images = marker_number(marker, "images")
        seconds = marker_number(marker, "wall_seconds")
        device = marker_number(marker, DEVICE_STAGE)
        if isinstance(marker.get("seconds"), dict):
            for stage, value in marker["seconds"].items():
                if isinstance(value, (int, float)):
                    stage_seconds[stage] += float(value)
        for name, field_name in TASK_TOTALS.items():
            value = marker_number(marker, field_name)
            if value is not None:
                task_seconds[name] += value
        per_shard.append(
            ShardTiming(
                marker_shard(marker, i),
                int(images or 0),
                seconds,
                device,
                (images / seconds) if images is not None and seconds else None,
            )
        )
    wall = _wall_seconds(view.stats)
    shards_planned = plan_shards(view.plan)
    rows = view.plan.get("rows")
    return RunReport(
        run_dir=str(view.run_dir),
        manifest_rows=rows if isinstance(rows, int) else None,
        rows=keys.num_rows,
        samples=len(set(keys.column("sample_id").to_pylist())),
        classes={k: len(v) for k, v in sorted(per_class.items())},
        num_aux=view.num_aux,
        shards_done=len(view.shard_paths),
        shards_planned=len(shards_planned) or len(view.shard_paths),
        unfinished_shards=[s.name for s in view.unfinished_shards()],
        failures=view.failures,
        failures_by_reason=dict(view.failure_reasons().most_common()),
        failures_by_stage=dict(Counter(f.stage or "?" for f in view.failures).most_common()),
        wall_seconds=wall,
        images_per_s=(keys.num_rows / wall) if wall else None,
        device_seconds=sum(t.device_seconds or 0.0 for t in per_shard),
        stage_seconds={k: round(v, 4) for k, v in sorted(stage_seconds.items())},
        task_seconds={k: round(task_seconds[k], 4) for k in TASK_TOTALS if k in task_seconds},
        per_shard=per_shard,
        disk_bytes=_dir_bytes(view.run_dir),
        shard_bytes=sum(p.stat().st_size for p in view.shard_paths),
        config=_config_summary(view),
        provenance=_provenance(view),
        condition_fallbacks=dict(sorted(fallbacks.items())),
        invalid_shards={c.shard.name: c.reason for c in view.invalid},
        fix=view.fix,
    )


# --- contact sheet -----------------------------------------------------------------------------


def choose_samples(sample_ids: Sequence[str], max_samples: int) -> list[str]:
    """A deterministic, well-spread choice: the `max_samples` ids with the smallest sha256."""
    unique = sorted(set(sample_ids), key=lambda s: (hashlib.sha256(s.encode()).hexdigest(), s))
    return unique[: max(0, max_samples)]


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


def column_labels(num_aux: int) -> list[str]:
    return ["support", "mask", "condition", *(f"aux {i + 1}" for i in range(num_aux))]


def mask_preview(mask: np.ndarray, class_id: int) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask == IGNORE_VALUE] = 128
    out[mask == class_id] = 255
    return out


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (imageio.ImageReadError, OSError, ValueError):
        return None  # the support may live on another machine: show an empty cell, not an error


def sheet_rows(run_dir: str | Path, max_samples: int = 8, index: AuxIndex | None = None) -> list[SheetRow]:
    """The samples of the contact sheet with their images (support and mask read from their paths)."""
    index = index or AuxIndex(run_dir)
    out = []
    for sid in choose_samples(list(index), max_samples):
        info = index.info(sid)
        mask = _try(imageio.load_mask, info.mask)
        out.append(
            SheetRow(
                sid,
                info.class_name,
                info.class_id,
                _try(imageio.load_image, info.image),
                None if mask is None else mask_preview(mask, info.class_id),
                index.condition_image(sid),
                index.aux_images(sid),
            )
        )
    return out


def sheet_size(num_rows: int, num_aux: int, thumb: int) -> tuple[int, int]:
    """(width, height) of a contact sheet with `num_rows` samples and X = `num_aux`."""
    return sheet.sheet_size(num_rows, 3 + num_aux, thumb, bottom=INSPECT_BOTTOM)


def contact_sheet(rows: Sequence[SheetRow], num_aux: int, thumb: int = 128) -> np.ndarray:
    """Draw the sheet (`difaug.core.sheet`): a header of column labels, then per sample a caption and
    its cells."""
    lines = [
        sheet.SheetLine(
            row.cells(num_aux),
            f"{display_text(row.sample_id)}  ·  {display_text(row.class_name)} ({row.class_id})",
            nearest={MASK_COLUMN},
        )
        for row in rows
    ]
    return sheet.draw_sheet(lines, thumb, labels=column_labels(num_aux), bottom=INSPECT_BOTTOM)


def write_sheet(out: str | Path, rows: Sequence[SheetRow], num_aux: int, thumb: int = 128) -> Path:
    """Write the contact sheet as a PNG of `sheet_size(len(rows), num_aux, thumb)`."""
    return fsio.write_bytes(out, imageio.encode_png(contact_sheet(rows, num_aux, thumb)))


# --- HTML --------------------------------------------------------------------------------------


def _data_uri(arr: np.ndarray | None, thumb: int, nearest: bool = False) -> str:
    png = imageio.encode_png(np.asarray(sheet.thumbnail(arr, thumb, nearest)))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _html(value: object) -> str:
    """Manifest text for the page: one line without control or direction marks, then escaped."""
    return html.escape(display_text(value, 1000))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    e = _html
    head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_html(report: RunReport, rows: Sequence[SheetRow], thumb: int = 192, extra: str = "") -> str:
    """A self-contained page: totals, timings, config, failures, and the sample grid."""
    e = _html
    totals = [
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
        ("GPU-seconds (generate)", _fmt(report.device_seconds)),
    ]
    grid_rows = []
    for row in rows:
        cells = "".join(
            f'<td><img src="{_data_uri(a, thumb, c == MASK_COLUMN)}" width="{thumb}" height="{thumb}"></td>'
            for c, a in enumerate(row.cells(report.num_aux))
        )
        caption = f"{e(row.sample_id)}<br><small>{e(row.class_name)} ({row.class_id})</small>"
        grid_rows.append(f"<tr><th>{caption}</th>{cells}</tr>")
    grid_head = "<tr><th>sample</th>" + "".join(f"<th>{e(c)}</th>" for c in column_labels(report.num_aux))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>difaug run {e(report.run_dir)}</title><style>",
        "body{font-family:sans-serif;margin:1.5em;background:#fafafa}"
        "table{border-collapse:collapse;margin:0 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
        ".grid td{padding:2px}.grid img{display:block}",
        "</style></head><body>",
        f"<h1>difaug run <code>{e(report.run_dir)}</code></h1>",
        "<h2>Totals</h2>",
        _table(("", ""), totals),
        "<h2>Configuration</h2>",
        _table(
            ("key", "value"),
            list(report.config.items()) + [(k, ", ".join(v)) for k, v in report.provenance.items()],
        ),
        "<h2>Invalid shards</h2>",
        (_table(("shard", "reason"), list(report.invalid_shards.items())) + f"<p>fix: {e(report.fix)}</p>")
        if report.invalid_shards
        else "<p>none</p>",
        "<h2>Failures by reason</h2>",
        _table(("reason", "rows"), list(report.failures_by_reason.items()))
        if report.failures
        else "<p>none</p>",
        "<h2>Failed rows</h2>",
        _table(
            ("row", "sample_id", "stage", "reason", "shard"),
            [(f.row, f.sample_id, f.stage, f.reason, f.shard) for f in report.failures],
        )
        if report.failures
        else "<p>none</p>",
        "<h2>Seconds by stage</h2>",
        _table(("stage", "seconds"), [(k, _fmt(v)) for k, v in report.stage_seconds.items()])
        if report.stage_seconds
        else "<p>none</p>",
        "<h2>Task totals (overlap the stages)</h2>",
        _table(
            ("total", "seconds"), [(TASK_TOTAL_LABELS[k], _fmt(v)) for k, v in report.task_seconds.items()]
        )
        if report.task_seconds
        else "<p>none</p>",
        "<h2>Per shard</h2>",
        _table(
            ("shard", "images", "seconds", "GPU-seconds", "images/s"),
            [
                (t.shard, t.images, _fmt(t.seconds), _fmt(t.device_seconds), _fmt(t.images_per_s))
                for t in report.per_shard
            ],
        ),
        "<h2>Classes</h2>",
        _table(("class", "samples"), list(report.classes.items())),
        f"<h2>Samples ({len(rows)} shown)</h2>",
        f"<table class='grid'><thead>{grid_head}</tr></thead><tbody>{''.join(grid_rows)}</tbody></table>",
        extra,  # e.g. scores_html(...)
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_html(
    out: str | Path, report: RunReport, rows: Sequence[SheetRow], thumb: int = 192, extra: str = ""
) -> Path:
    """Write the browsable page; images are embedded, so the file can be moved or mailed alone."""
    return fsio.write_text(out, render_html(report, rows, thumb, extra))


# --- drift scores (difaug.diffusion.diffseg) ---------------------------------------------------------------

SCORE_BINS = 10  # histogram bins over [0, 1]
SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class ScoreStats:
    """The distribution of `drift_iou` over a run's finished shards."""

    rows: int  # aux images in finished shards
    scored: int  # rows with a score
    mean: float | None
    quantiles: dict[str, float]  # "p5" … "p95"
    bins: list[int]  # counts of SCORE_BINS equal bins over [0, 1]
    mean_segments: float | None
    lowest: list[tuple[str, float]]  # (key, drift_iou), lowest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_stats(run_dir: str | Path, lowest: int = 8) -> ScoreStats:
    """Score numbers from the shards' score columns (no image bytes read)."""
    view = open_run(run_dir)
    keys: list[str] = []
    ious: list[float | None] = []
    segments: list[int | None] = []
    for path in view.shard_paths:
        t = shards.read_shard(path, columns=["key", "drift_iou", "drift_segments"])
        keys += t.column("key").to_pylist()
        ious += t.column("drift_iou").to_pylist()
        segments += t.column("drift_segments").to_pylist()
    scored = [(k, v) for k, v in zip(keys, ious, strict=True) if v is not None]
    values = np.array([v for _, v in scored], dtype=np.float64)
    segs = [s for s in segments if s is not None]
    return ScoreStats(
        rows=len(keys),
        scored=len(scored),
        mean=float(values.mean()) if len(values) else None,
        quantiles={f"p{round(q * 100)}": float(np.quantile(values, q)) for q in SCORE_QUANTILES}
        if len(values)
        else {},
        bins=np.histogram(values, bins=SCORE_BINS, range=(0.0, 1.0))[0].astype(int).tolist(),
        mean_segments=float(np.mean(segs)) if segs else None,
        lowest=sorted(scored, key=lambda kv: (kv[1], kv[0]))[:lowest],
    )


def text_histogram(stats: ScoreStats, width: int = 30) -> list[str]:
    """One line per bin: `0.0–0.1 │████      12`."""
    top = max(stats.bins, default=0) or 1
    lines = []
    for i, n in enumerate(stats.bins):
        bar = "█" * round(width * n / top)
        lines.append(f"{i / SCORE_BINS:.1f}–{(i + 1) / SCORE_BINS:.1f} │{bar:<{width}} {n}")
    return lines


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
        draw.text((x0 + 2, bottom + 3), f"{i / SCORE_BINS:.1f}", fill=(0, 0, 0), font=font)
    return np.asarray(img)


def lowest_sheet_rows(
    run_dir: str | Path, stats: ScoreStats, index: AuxIndex | None = None
) -> list[SheetRow]:
    """Contact-sheet rows for the lowest-scoring aux images: support | mask | condition | that aux."""
    index = index or AuxIndex(run_dir)
    out = []
    for key, iou in stats.lowest:
        sid, _, k = key.rpartition("/")
        info = index.info(sid)
        mask = _try(imageio.load_mask, info.mask)
        aux = index.aux_images(sid)
        out.append(
            SheetRow(
                f"{key}  drift_iou {iou:.2f}",
                info.class_name,
                info.class_id,
                _try(imageio.load_image, info.image),
                None if mask is None else mask_preview(mask, info.class_id),
                index.condition_image(sid),
                [aux[int(k)]] if int(k) < len(aux) else [],
            )
        )
    return out


def scores_html(stats: ScoreStats, lowest: Sequence[SheetRow], thumb: int = 160) -> str:
    """The HTML section of the drift scores: numbers, histogram, lowest-scoring images."""
    e = html.escape
    if not stats.scored:
        return "<h2>Drift scores</h2><p>none (run <code>difaug score RUN</code>)</p>"
    numbers = [("scored / rows", f"{stats.scored} / {stats.rows}"), ("mean drift_iou", _fmt(stats.mean, 3))]
    numbers += [(k, _fmt(v, 3)) for k, v in stats.quantiles.items()]
    numbers.append(("mean segments", _fmt(stats.mean_segments, 1)))
    hist = imageio.encode_png(histogram_image(stats))
    rows = []
    for row in lowest:
        cells = "".join(
            f'<td><img src="{_data_uri(a, thumb, c == MASK_COLUMN)}" width="{thumb}" height="{thumb}"></td>'
            for c, a in enumerate(row.cells(1))
        )
        rows.append(f"<tr><th>{e(row.sample_id)}<br><small>{e(row.class_name)}</small></th>{cells}</tr>")
    head = "<tr><th>aux image</th>" + "".join(f"<th>{e(c)}</th>" for c in column_labels(1)) + "</tr>"
    return "\n".join(
        [
            "<h2>Drift scores (DiffSeg IoU with the support mask)</h2>",
            _table(("", ""), numbers),
            f"<img alt='drift_iou histogram' src='data:image/png;base64,{base64.b64encode(hist).decode()}'>",
            f"<h2>Lowest drift scores ({len(lowest)})</h2>",
            f"<table class='grid'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>",
        ]
    )


def write_segment_sheet(
    out: str | Path, previews: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]], thumb: int = 128
) -> Path:
    """`difaug segment`'s sheet: image | ground-truth mask | DiffSeg segments, one row per image."""
    from difaug.diffusion.diffseg import colourise

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
