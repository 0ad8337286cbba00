"""`difaug inspect`: counts, timings, failures, config and a contact sheet of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from difaug.cli._common import console, fail
from difaug.cli._common import escape_text as escape

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.table import Table

    from difaug.report.data import RunReport, ScoreStats
    from difaug.report.overlay import Explained
    from difaug.report.sheets import SheetRow


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def inspect(
    run: Path = typer.Argument(..., help="Run directory written by `difaug generate`."),
    sheet: Path | None = typer.Option(
        None, "--sheet", help="Write a contact sheet PNG: support | mask | condition | aux 1..X per row."
    ),
    html: Path | None = typer.Option(
        None, "--html", help="Write a self-contained HTML page (images embedded)."
    ),
    max_samples: int = typer.Option(
        8, "--max-samples", "-n", min=1, help="Samples on the sheet/page (a fixed, hash-spread choice)."
    ),
    thumb: int = typer.Option(128, "--thumb", min=16, help="Cell size of the contact sheet, pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
    show: int = typer.Option(20, "--show", min=0, help="List at most N failed rows and shards."),
    lowest: int = typer.Option(
        8,
        "--lowest",
        min=0,
        help="Lowest drift scores to show: listed, on a second sheet (SHEET-lowest.png) and in --html.",
    ),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Segment the lowest-scoring images again with DiffSeg on the run's base model and draw why "
        "each scored low: its segments over it, those counted as the object striped, the mask's outline "
        "(on SHEET-lowest.png and in --html; the recomputed scores are listed). Loads the base model.",
    ),
    device: str = typer.Option("auto", "--device", help="For --explain: auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="For --explain: auto (float16 on CUDA, float32 on CPU), float32, …"
    ),
) -> None:
    """Print what a run holds: rows, samples, classes, failures by reason; images/s overall and per
    shard, GPU-seconds; disk use; the job config. Optionally draw a contact sheet and an HTML page.

    Example:

        difaug inspect runs/demo --sheet runs/demo/contact_sheet.png --html runs/demo/index.html --explain
    """
    from difaug.report import data

    report = data.summarise(run)
    scores = data.score_stats(run, lowest)
    explained = _explain(run, scores, device, dtype) if explain else None
    low_rows = _draw(run, report, scores, sheet, html, max_samples, thumb, explained)
    if as_json:
        console.print_json(json.dumps(report.to_dict() | {"drift_scores": scores.to_dict()}, default=str))
        return
    _print_totals(report)
    _print_regeneration(report)
    _print_config(report)
    _print_shards(report, show)
    _print_failures(report, show)
    _print_scores(scores, explained)
    if sheet:
        console.print(f"contact sheet: {escape(str(sheet))}")
        if low_rows:
            console.print(f"lowest drift scores sheet: {escape(str(_lowest_sheet_path(sheet)))}")
    if html:
        console.print(f"html: {escape(str(html))}")


def _draw(
    run: Path,
    report: RunReport,
    scores: ScoreStats,
    sheet: Path | None,
    html: Path | None,
    max_samples: int,
    thumb: int,
    explained: Mapping[str, Explained] | None,
) -> list[SheetRow]:
    """Write the contact sheets and the page that were asked for; the lowest-score rows drawn
    (with their drift overlays when `explained`)."""
    from difaug.report import html as page
    from difaug.report import sheets

    if not (sheet or html):
        return []
    low_rows = sheets.lowest_sheet_rows(run, scores, explained=explained) if scores.lowest else []
    rows = sheets.sheet_rows(run, max_samples)
    if sheet:
        sheets.write_sheet(sheet, rows, report.num_aux, thumb)
        if low_rows:
            labels = sheets.lowest_labels(explained is not None)
            sheets.write_sheet(_lowest_sheet_path(sheet), low_rows, len(labels) - 3, thumb, labels)
    if html:
        page.write_html(
            html, report, rows, extra=page.scores_html(scores, low_rows, explained=explained is not None)
        )
    return low_rows


def _explain(run: Path, scores: ScoreStats, device: str, dtype: str) -> dict[str, Explained]:
    """The lowest-scoring images segmented again on the run's base model (`--explain`)."""
    from difaug.core.config import RuntimeConfig
    from difaug.report import overlay

    if not scores.lowest:
        return {}
    runtime = RuntimeConfig(device=device, dtype=dtype).validate()
    try:
        explainer = overlay.load_explainer(run, runtime)
    except OSError as e:  # a model that cannot be loaded: the loader's words name it
        fail(str(e))
    with console.status(f"segmenting the {len(scores.lowest)} lowest-scoring images with DiffSeg"):
        return overlay.explain_lowest(run, scores, explainer)


def _lowest_sheet_path(sheet: Path) -> Path:
    return sheet.with_name(f"{sheet.stem}-lowest{sheet.suffix or '.png'}")


def _key_value_table(title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    return table


def _print_totals(report: RunReport) -> None:
    from difaug.report.data import TASK_TOTAL_LABELS
    from difaug.report.text import human_bytes

    totals = _key_value_table(f"run {escape(report.run_dir)}")
    task_totals = ", ".join(f"{TASK_TOTAL_LABELS[k]} {v:,.1f}" for k, v in report.task_seconds.items())
    for k, v in (
        ("manifest rows (planned)", report.manifest_rows),
        ("aux images", report.rows),
        ("samples with images", f"{report.samples}  (X = {report.num_aux} each)"),
        ("classes", len(report.classes)),
        ("failed rows", len(report.failures)),
        ("shards finished / planned", f"{report.shards_done} / {report.shards_planned}"),
        ("disk: run dir / shards", f"{human_bytes(report.disk_bytes)} / {human_bytes(report.shard_bytes)}"),
        ("wall time", f"{_num(report.wall_seconds, 1)} s"),
        ("images/s overall", _num(report.images_per_s)),
        (f"{report.device_label} (generate)", _num(report.device_seconds, 1)),
        ("seconds by stage", ", ".join(f"{k} {v:,.1f}" for k, v in report.stage_seconds.items()) or "–"),
        ("task totals (overlap the stages)", task_totals or "–"),
    ):
        totals.add_row(k, "–" if v is None else escape(str(v)))
    console.print(totals)


def _print_regeneration(report: RunReport) -> None:
    """What regenerating drifted images did (`--min-drift-iou`): passes per attempt, cost."""
    from difaug.report.text import regeneration_rows

    if report.regeneration is None:
        return
    table = _key_value_table("regeneration (drift_iou below the threshold → next attempt's seed)")
    for k, v in regeneration_rows(report.regeneration):
        table.add_row(k, escape(v))
    console.print(table)


def _print_config(report: RunReport) -> None:
    cfg = _key_value_table("config")
    for k, v in report.config.items():
        cfg.add_row(k, escape(str(v)))
    for k, values in report.provenance.items():
        cfg.add_row(f"{k} (shards)", escape(", ".join(values)))
    console.print(cfg)


def _print_shards(report: RunReport, show: int) -> None:
    """Per-shard timings, seg fallbacks, and the shards that are invalid or unfinished."""
    from rich.table import Table

    shards = Table(title="per shard", title_justify="left")
    for col in ("shard", "images", "seconds", report.device_label, "images/s"):
        shards.add_column(col, justify="right")
    for t in report.per_shard[:show]:
        shards.add_row(t.shard, str(t.images), _num(t.seconds), _num(t.device_seconds), _num(t.images_per_s))
    console.print(shards)
    if len(report.per_shard) > show:
        console.print(f"… {len(report.per_shard) - show} more shards")
    for name, n in report.condition_fallbacks.items():
        console.print(
            f"[yellow]note:[/] class {escape(repr(name))} has no ADE20K mapping: {n} sample(s) used the seg fallback colour"
        )
    if report.invalid_shards:
        console.print(
            f"[red]{len(report.invalid_shards)} invalid shard(s)[/] (not counted above; their rows are redone):"
        )
        for name, reason in list(report.invalid_shards.items())[:show]:
            console.print(f"  {name}: {escape(reason)}", highlight=False)
    if report.unfinished_shards:
        console.print(f"[yellow]unfinished shards:[/] {', '.join(report.unfinished_shards[:show])}")
    if report.invalid_shards or report.unfinished_shards:
        console.print(f"fix: {escape(report.fix)}", highlight=False)


def _print_failures(report: RunReport, show: int) -> None:
    from rich.table import Table

    if not report.failures:
        console.print("[green]no failed rows[/]")
        return
    reasons = Table(title="failures by reason", title_justify="left")
    reasons.add_column("rows", justify="right")
    reasons.add_column("reason", overflow="fold")
    for reason, n in report.failures_by_reason.items():
        reasons.add_row(str(n), escape(reason))
    console.print(reasons)
    failed = Table(title="failed rows", title_justify="left")
    for col in ("row", "sample_id", "stage", "reason"):
        failed.add_column(col, overflow="fold")
    for f in report.failures[:show]:
        failed.add_row(
            str(f.row if f.row is not None else ""), escape(f.sample_id), f.stage, escape(f.reason)
        )
    console.print(failed)
    if len(report.failures) > show:
        console.print(f"… {len(report.failures) - show} more failed rows (--json lists all)")


def _print_scores(scores: ScoreStats, explained: Mapping[str, Explained] | None = None) -> None:
    """The drift-score distribution (difaug.diffusion.diffseg): numbers, a text histogram, the lowest rows."""
    from difaug.report.text import text_histogram

    if not scores.scored:
        console.print(f"drift scores: none of {scores.rows} rows scored (`difaug score RUN` fills them)")
        return
    q = "  ".join(f"{k} {v:.2f}" for k, v in scores.quantiles.items())
    console.print(
        f"[bold]drift scores[/] (DiffSeg IoU with the support mask): {scores.scored} / {scores.rows} "
        f"scored, mean {scores.mean:.3f}, {q}, {_num(scores.mean_segments, 1)} segments per image"
    )
    for line in text_histogram(scores):
        console.print("  " + line, highlight=False)
    if scores.lowest:
        console.print("lowest: " + ", ".join(f"{escape(k)} {v:.2f}" for k, v in scores.lowest))
    for key, iou in scores.lowest if explained is not None else ():
        why = explained[key].caption() if key in explained else "not explained (aux image or mask unreadable)"
        console.print(f"  {escape(key)}: stored {iou:.2f}, {escape(why)}", highlight=False)
