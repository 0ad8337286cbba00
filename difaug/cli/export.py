"""`difaug export`: a run's auxiliary images as files where an external FSS trainer reads them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from difaug.adapters.export.layouts import LAYOUTS, get_layout
from difaug.cli._common import console, err_console
from difaug.cli._common import escape_text as escape

if TYPE_CHECKING:
    from difaug.adapters.export.layouts import Layout
    from difaug.adapters.export.result import ExportResult
    from difaug.core.folderlock import LockOwner

# One line per registered layout: a layout added to the registry is listed here by itself.
LAYOUT_HELP = "; ".join(f"{name}: {layout.help}" for name, layout in LAYOUTS.items()) + "."


def export(
    run: Path = typer.Argument(..., help="Run directory written by `difaug generate`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the files into (BAM: aux_data_dir)."),
    layout: str = typer.Option("diffss-bam", "--layout", "-l", help=LAYOUT_HELP, show_default=True),
    image_format: str | None = typer.Option(
        None,
        "--format",
        help="jpg or png (default: jpg for diffss-bam and fss, as DifFSS saved; png for folder).",
    ),
    with_conditions: bool = typer.Option(
        False,
        "--with-conditions",
        help="Also write each support's condition image, as DifFSS did: {stem}_{class_id}_control.jpg "
        "beside the aux images (fss: {idx}_1_control.jpg; folder: {sample_id}_control.png).",
    ),
    min_drift_iou: float | None = typer.Option(
        None,
        "--min-drift-iou",
        min=0.0,
        max=1.0,
        help="Keep only aux images whose DiffSeg drift_iou is at least this (kept ones renumbered k=0,1,…). "
        "Needs drift scores: `difaug score RUN`.",
    ),
    quality: int = typer.Option(
        95, "--quality", min=1, max=100, help="JPEG quality when re-encoding (JPEG shards are copied as is)."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Threads encoding and writing files."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Exit with code 1 if any support lacks some of its X images (other than by --min-drift-iou) "
        "or any stored image could not be exported.",
    ),
    show: int = typer.Option(20, "--show", min=0, help="List at most N incomplete supports."),
    force_unlock: bool = typer.Option(
        False,
        "--force-unlock",
        help="Take OUT's lock even if another host's export recorded it (only when that export is gone).",
    ),
) -> None:
    """Write one file per auxiliary image and report coverage: which supports got all X images,
    which did not, and why. Re-running rewrites nothing that is already right. The DifFSS BAM
    loader silently uses the real support when a file is missing, so read the coverage report
    (also saved as OUT/difaug-export.json, which covers every run exported into OUT).

    Exporting the same run again with another selection (--min-drift-iou, --layout, --format,
    --with-conditions) removes the files of its earlier export into OUT that this one does not
    write, so OUT holds one export per run; files of other runs exported there, files changed
    since difaug wrote them and anything else in OUT are never removed. A second export into OUT
    waits for the one in progress.

    Examples:

        difaug export runs/pascal5i-fold0-hed --layout diffss-bam --out BAM/aux/pascal-hed/

        difaug export runs/fss1000-hed --layout fss --with-conditions --out aux/fss-hed/
    """
    from difaug.adapters.export.exporter import export_run

    chosen = get_layout(layout)  # the library's check: an unknown name fails before the run is read

    def waiting(owner: LockOwner | None) -> None:
        from difaug.core.folderlock import wait_message

        err_console.print(escape(wait_message(out, owner)), highlight=False)

    result = export_run(
        run, out, chosen.name, image_format=image_format, quality=quality, workers=workers,
        with_conditions=with_conditions, min_drift_iou=min_drift_iou, on_wait=waiting,
        force_unlock=force_unlock,
    )  # fmt: skip
    if result.lock_taken_over:
        err_console.print(
            f"[yellow]note:[/] took over the lock of {escape(str(out))} left by {escape(result.lock_taken_over)}"
        )
    _print_files(result, show)
    if min_drift_iou is not None:
        n = sum(result.filtered.values())
        console.print(
            f"drift filter (drift_iou >= {min_drift_iou}): {n} aux image(s) left out, "
            f"from {len(result.filtered)} support(s)"
        )
    _print_coverage(result, chosen, show)
    if strict and (result.missing_not_filtered or result.not_generated or result.skipped):
        raise typer.Exit(1)


def _print_files(result: ExportResult, show: int) -> None:
    """What is in OUT now: the files written and kept, removed or left from an earlier export."""
    console.print(
        f"[bold]{result.files}[/] files in [bold]{escape(str(result.out))}[/] ({result.layout}, {result.image_format}): "
        f"{result.written} written, {result.unchanged} already up to date."
    )
    x = result.expected_per_support
    console.print(
        f"supports: {result.supports}  ·  complete ({x}/{x}): [green]{result.complete}[/]  ·  "
        f"incomplete: [red]{len(result.incomplete)}[/]  ·  not generated yet: {result.not_generated}"
    )
    if result.conditions:
        console.print(f"condition images: {result.conditions}")
    if result.removed:
        console.print(
            f"removed {len(result.removed)} file(s) of this run's earlier export into {escape(str(result.out))} "
            "that this export does not write"
        )
    for kept in result.kept_stale[: max(show, 1)]:
        err_console.print(
            f"[yellow]left in place:[/] {escape(kept['path'])} (of this run's earlier export: {escape(kept['reason'])})"
        )
    if result.earlier_unrecorded:
        err_console.print(
            "[yellow]note:[/] the earlier export of this run into this folder was made by a difaug that "
            "recorded no file list: files of it that this export does not write (e.g. higher k) were not "
            "removed. Export into a fresh folder to be sure; from now on re-exports clean up."
        )


def _print_coverage(result: ExportResult, chosen: Layout, show: int) -> None:
    """The images not exported, the supports without all X, the unfinished shards, the totals."""
    from rich.table import Table

    if result.skipped:
        console.print(f"[red]{len(result.skipped)} image(s) not exported[/]:")
        for sk in result.skipped[: max(show, 1)]:
            console.print(f"  {escape(sk.sample_id)} {sk.what}: {escape(sk.reason)}", highlight=False)
    if result.incomplete and show:
        table = Table(title="supports without all their aux images", title_justify="left")
        for col in ("sample_id", "row", "have", "why"):
            table.add_column(col, overflow="fold")
        for s in result.incomplete[:show]:
            table.add_row(
                escape(s.sample_id), str(s.row or ""), f"{s.have}/{s.expected}", escape("; ".join(s.reasons))
            )
        console.print(table)
        if len(result.incomplete) > show:
            console.print(f"… and {len(result.incomplete) - show} more (see {result.out}/difaug-export.json)")
    for shard in result.unfinished_shards:
        console.print(
            f"shard {shard['name']} (manifest rows {shard['start']}–{shard['stop'] - 1}) has not finished: "
            "run `difaug generate` again with the same arguments to complete it"
        )
    if chosen.missing_note and (result.incomplete or result.not_generated):
        err_console.print(f"[yellow]note:[/] {chosen.missing_note}")
    total = result.folder_total
    if int(total.get("runs") or 0) > 1:
        console.print(
            f"all {total['runs']} runs exported into {escape(str(result.out))}: {total['supports']} supports, "
            f"{total['complete']} complete, {total['incomplete']} incomplete, "
            f"{total['not_generated']} not generated yet (difaug-export.json)"
        )
