"""`difaug inspect`: counts, timings, failures, config and a contact sheet of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from difaug.cli._common import console, fail
from difaug.cli._common import escape_text as escape

if TYPE_CHECKING:
    from difaug.report.data import ScoreStats


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
) -> None:
    """Print what a run holds: rows, samples, classes, failures by reason; images/s overall and per
    shard, GPU-seconds; disk use; the job config. Optionally draw a contact sheet and an HTML page.

    Example:

        difaug inspect runs/demo --sheet runs/demo/contact_sheet.png --html runs/demo/index.html
    """
    from rich.table import Table

    from difaug.adapters.run import RunError
    from difaug.report import data as rpt

    try:
        rep = rpt.summarise(run)
    except RunError as e:
        fail(str(e))

    scores = rpt.score_stats(run, lowest)
    low_rows = rpt.lowest_sheet_rows(run, scores) if (sheet or html) and scores.lowest else []
    if sheet or html:
        rows = rpt.sheet_rows(run, max_samples)
        if sheet:
            rpt.write_sheet(sheet, rows, rep.num_aux, thumb)
            if low_rows:
                rpt.write_sheet(_lowest_sheet_path(sheet), low_rows, 1, thumb)
        if html:
            rpt.write_html(html, rep, rows, extra=rpt.scores_html(scores, low_rows))
    if as_json:
        console.print_json(json.dumps(rep.to_dict() | {"drift_scores": scores.to_dict()}, default=str))
        return

    totals = Table(title=f"run {escape(rep.run_dir)}", title_justify="left", show_header=False)
    totals.add_column(style="bold")
    totals.add_column()
    for k, v in (
        ("manifest rows (planned)", rep.manifest_rows),
        ("aux images", rep.rows),
        ("samples with images", f"{rep.samples}  (X = {rep.num_aux} each)"),
        ("classes", len(rep.classes)),
        ("failed rows", len(rep.failures)),
        ("shards finished / planned", f"{rep.shards_done} / {rep.shards_planned}"),
        ("disk: run dir / shards", f"{rpt.human_bytes(rep.disk_bytes)} / {rpt.human_bytes(rep.shard_bytes)}"),
        ("wall time", f"{_num(rep.wall_seconds, 1)} s"),
        ("images/s overall", _num(rep.images_per_s)),
        ("GPU-seconds (generate)", _num(rep.device_seconds, 1)),
        ("seconds by stage", ", ".join(f"{k} {v:,.1f}" for k, v in rep.stage_seconds.items()) or "–"),
        (
            "task totals (overlap the stages)",
            ", ".join(f"{rpt.TASK_TOTAL_LABELS[k]} {v:,.1f}" for k, v in rep.task_seconds.items()) or "–",
        ),
    ):
        totals.add_row(k, "–" if v is None else escape(str(v)))
    console.print(totals)

    cfg = Table(title="config", title_justify="left", show_header=False)
    cfg.add_column(style="bold")
    cfg.add_column(overflow="fold")
    for k, v in rep.config.items():
        cfg.add_row(k, escape(str(v)))
    for k, values in rep.provenance.items():
        cfg.add_row(f"{k} (shards)", escape(", ".join(values)))
    console.print(cfg)

    shards = Table(title="per shard", title_justify="left")
    for col in ("shard", "images", "seconds", "GPU-s", "images/s"):
        shards.add_column(col, justify="right")
    for t in rep.per_shard[:show]:
        shards.add_row(t.shard, str(t.images), _num(t.seconds), _num(t.device_seconds), _num(t.images_per_s))
    console.print(shards)
    if len(rep.per_shard) > show:
        console.print(f"… {len(rep.per_shard) - show} more shards")
    for name, n in rep.condition_fallbacks.items():
        console.print(
            f"[yellow]note:[/] class {escape(repr(name))} has no ADE20K mapping: {n} sample(s) used the seg fallback colour"
        )
    if rep.invalid_shards:
        console.print(
            f"[red]{len(rep.invalid_shards)} invalid shard(s)[/] (not counted above; their rows are redone):"
        )
        for name, reason in list(rep.invalid_shards.items())[:show]:
            console.print(f"  {name}: {escape(reason)}", highlight=False)
    if rep.unfinished_shards:
        console.print(f"[yellow]unfinished shards:[/] {', '.join(rep.unfinished_shards[:show])}")
    if rep.invalid_shards or rep.unfinished_shards:
        console.print(f"fix: {escape(rep.fix)}", highlight=False)

    if rep.failures:
        reasons = Table(title="failures by reason", title_justify="left")
        reasons.add_column("rows", justify="right")
        reasons.add_column("reason", overflow="fold")
        for reason, n in rep.failures_by_reason.items():
            reasons.add_row(str(n), escape(reason))
        console.print(reasons)
        failed = Table(title="failed rows", title_justify="left")
        for col in ("row", "sample_id", "stage", "reason"):
            failed.add_column(col, overflow="fold")
        for f in rep.failures[:show]:
            failed.add_row(
                str(f.row if f.row is not None else ""), escape(f.sample_id), f.stage, escape(f.reason)
            )
        console.print(failed)
        if len(rep.failures) > show:
            console.print(f"… {len(rep.failures) - show} more failed rows (--json lists all)")
    else:
        console.print("[green]no failed rows[/]")
    _print_scores(scores)
    if sheet:
        console.print(f"contact sheet: {escape(str(sheet))}")
        if low_rows:
            console.print(f"lowest drift scores sheet: {escape(str(_lowest_sheet_path(sheet)))}")
    if html:
        console.print(f"html: {escape(str(html))}")


def _lowest_sheet_path(sheet: Path) -> Path:
    return sheet.with_name(f"{sheet.stem}-lowest{sheet.suffix or '.png'}")


def _print_scores(scores: ScoreStats) -> None:
    """The drift-score distribution (difaug.diffusion.diffseg): numbers, a text histogram, the lowest rows."""
    from difaug.report.data import text_histogram

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
