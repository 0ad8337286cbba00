"""`difaug conditions`: compute the ControlNet conditions of a manifest and write them as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from difaug.cli._common import console, err_console, fail
from difaug.core.config import CONDITIONS
from difaug.core.text import display_text

if TYPE_CHECKING:
    from difaug.conditions import Condition
    from difaug.conditions.preview import PreviewResult
    from difaug.inputs.manifest import RowProblem, Sample


def conditions(
    manifest: str = typer.Option(
        ..., "--manifest", "-m", help="Manifest (.csv/.jsonl/.parquet), a path or fsspec URL."
    ),
    condition: str = typer.Option(
        "hed", "--condition", "-c", help="Condition: seg, hed or scribble.", show_default=True
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the PNGs and contact sheet."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Only the first N rows."),
    hed_weights: str = typer.Option(
        "lllyasviel/Annotators",
        "--hed-weights",
        help="HED weights: hub repo id, a folder holding ControlNetHED.pth, or the file itself.",
    ),
    resolution: int = typer.Option(512, "--resolution", min=64, help="Short side of the working size."),
    detect_resolution: int = typer.Option(
        512, "--detect-resolution", min=64, help="Short side HED runs at (hed, scribble); DifFSS: 512."
    ),
    condition_style: str = typer.Option(
        "diffss", "--condition-style", help="diffss (masked, as DifFSS) or upstream (ControlNet annotator)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Samples per HED forward pass."),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: CUDA if present)."),
) -> None:
    """Write each sample's condition (at the ControlNet working size) to OUT/{sample_id}.png, plus
    OUT/contact_sheet.png (support | mask overlay | condition per row). Exit code 1 if any row failed.

    Example:

        difaug conditions --manifest manifests/demo/manifest.csv --condition hed --out previews/hed
    """
    if condition not in CONDITIONS:
        fail(f"unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}")
    from difaug.conditions import make_condition
    from difaug.inputs.manifest import read_manifest

    mf = read_manifest(manifest)
    samples = [s for s in mf.samples if limit is None or s.row <= limit]
    problems = [p for p in mf.problems if limit is None or p.row <= limit]
    cond = make_condition(
        condition,
        style=condition_style,
        resolution=resolution,
        hed_weights=hed_weights,
        device=device,
        batch_size=batch_size,
        detect_resolution=detect_resolution,
    )
    result = _write_with_bar(samples, cond, out, condition, batch_size)
    console.print(
        f"wrote {len(result.written)} {condition} condition(s) ({condition_style}, resolution "
        f"{resolution}) to {escape(str(out))}; contact sheet {escape(str(result.sheet))}",
        highlight=False,
    )
    _print_fallbacks(result.fallbacks)
    problems = sorted([*problems, *result.problems], key=lambda p: p.row)
    _print_problems(problems)
    if problems:
        raise typer.Exit(1)


def _write_with_bar(
    samples: list[Sample], cond: Condition, out: Path, condition: str, batch_size: int
) -> PreviewResult:
    """`write_conditions` with a transient progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from difaug.conditions.preview import write_conditions

    with Progress(
        TextColumn(f"[bold]{condition}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(condition, total=len(samples))
        return write_conditions(
            samples, cond, out, batch_size=batch_size, on_progress=lambda n: progress.advance(task, n)
        )


def _print_fallbacks(fallbacks: dict[str, int]) -> None:
    """The classes the seg condition painted in the fallback colour (no ADE20K entry for them)."""
    from difaug.conditions.seg import FALLBACK_COLOUR

    for name, count in sorted(fallbacks.items()):
        console.print(
            f"[yellow]note:[/] class {escape(display_text(repr(name)))} has no ADE20K mapping; "
            f"{count} sample(s) use the fallback colour {FALLBACK_COLOUR}",
            highlight=False,
        )


def _print_problems(problems: list[RowProblem]) -> None:
    for p in problems:
        where = f"{p.file}: " if p.file else ""
        err_console.print(
            f"[red]row {p.row}[/] ({escape(p.column)}) {escape(display_text(where + p.reason, 500))}",
            highlight=False,
        )
    if problems:
        err_console.print(f"[bold red]{len(problems)} row(s) failed[/]", highlight=False)
