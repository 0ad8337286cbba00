"""`difaug score`: DiffSeg drift scores for the finished shards of a run made without them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from difaug.cli._common import console, err_console, fail


def score(
    run: Path = typer.Argument(..., help="Run directory written by `difaug generate`."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float16 on CUDA, float32 on CPU), float32, …"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Aux images per UNet pass."),
) -> None:
    """Fill `drift_iou` and `drift_segments` in every finished shard that lacks them (a run made with
    `score: none`, or before scoring existed). Shard by shard and atomic: an interrupted call
    resumes where it stopped, and a second call changes nothing. The model is the run's own base
    model (from its plan), loaded without its ControlNet: UNet, VAE and text encoder only.

    Example:

        difaug score runs/demo && difaug inspect runs/demo
    """
    from difaug.core.config import RuntimeConfig
    from difaug.run import rescore

    if not (run / "difaug.json").is_file():
        fail(f"{run} is not a run directory (no difaug.json); pass the --out of `difaug generate`")
    cfg = rescore.run_config(run)
    runtime = RuntimeConfig(device=device, dtype=dtype, batch_size=batch_size).validate()
    try:
        scorer = rescore.load_scorer(cfg, runtime)
    except OSError as e:  # a model that cannot be loaded: the loader's words name it, not a path to write
        fail(str(e))

    def progress(index: int, what: str) -> None:
        console.print(f"shard {index:05d}: {what}")

    summary = rescore.score_run(run, scorer, batch_size=batch_size, progress=progress)
    console.print(
        f"scored {summary.rows} aux images in {len(summary.scored_shards)} shard(s); "
        f"{len(summary.skipped_shards)} shard(s) already scored; {summary.seconds:.1f} s"
    )
    for u in summary.unverified:
        err_console.print(
            f"[yellow]not scored:[/] shard {u['shard']:05d}: {escape(u['reason'])} "
            "(`difaug generate` with the run's command redoes it)"
        )
    for p in summary.unscorable[:20]:
        err_console.print(f"[yellow]left null:[/] {escape(p['key'])}: {escape(p['reason'])}")
