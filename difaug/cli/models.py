"""`difaug models` — model bundles: build the tiny offline one, show what a config resolves to,
and compile a job's shapes into its compile cache once (`warmup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from difaug.cli._common import add_options, console, fail
from difaug.cli.generate import Flag, config_flags, flag_options, job_flags

app = typer.Typer(
    help="Model weights: build a tiny random bundle for offline tests and demos; warm a compile cache.",
    no_args_is_help=True,
)


@app.command("make-tiny")
def make_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write the bundle into (created if missing)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed; the same seed writes the same bytes."),
) -> None:
    """Write a tiny random SD1.5 + ControlNet (hed, seg, scribble) + HED bundle in the hub layout.

    The images it makes are noise; it exists so that every code path runs without downloads.

    Example:

        difaug models make-tiny models/tiny
        difaug generate --manifest manifests/demo/manifest.csv --model models/tiny --out runs/demo
    """
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir} exists and is not a folder; pass a folder path")
    from difaug.testing.tiny import make_tiny as build

    try:
        path = build(out_dir, seed=seed)
    except OSError as exc:
        fail(f"cannot write the tiny models into {out_dir}: {exc}")
    console.print(
        f"wrote a tiny model bundle to [bold]{escape(str(path))}[/] (seed {seed}); use it with --model {escape(str(path))}"
    )


@app.command("show")
def show(
    model: str = typer.Option("", "--model", help="A bundle folder (difaug-models.json) or a base model."),
    condition: str = typer.Option("hed", "--condition", help="seg, hed or scribble."),
    base_model: str = typer.Option(None, "--base-model", help="Base SD1.5 model: hub id or folder."),
    controlnet: str = typer.Option(None, "--controlnet", help="ControlNet: hub id or folder."),
    hed_weights: str = typer.Option(None, "--hed-weights", help="HED weights: hub id, folder or .pth."),
) -> None:
    """Print the base model, ControlNet and HED weights a job would load (nothing is loaded).

    Example:

        difaug models show --model models/tiny --condition seg
    """
    from difaug.core.config import JobConfig
    from difaug.diffusion.specs import ModelSpec

    overrides = {"base_model": base_model, "controlnet": controlnet, "hed_weights": hed_weights}
    cfg = JobConfig(
        condition=condition, model=model, **{k: v for k, v in overrides.items() if v is not None}
    ).validate()
    spec = ModelSpec.from_config(cfg)
    console.print(f"base model : {escape(spec.base)}", highlight=False)
    console.print(f"controlnet : {escape(spec.controlnet)}", highlight=False)
    console.print(f"hed weights: {escape(spec.hed_weights)}", highlight=False)


# Beside the settings models are built with: whether `compile: auto` compiles, and which rows
# (so which sizes) the job generates at all.
_WARMUP_RUNTIME_KEYS = ("compile_min_images", "max_side", "max_aspect", "max_pixels")


def warmup_flags() -> dict[str, Flag]:
    """RuntimeConfig's flags a warm-up depends on: those the models are built with
    (`setting(models=True)`: device, dtype, batch size, compile, cache folder, …) and
    `_WARMUP_RUNTIME_KEYS`; not those of the cluster."""
    from dataclasses import fields

    from difaug.core.config import RuntimeConfig

    keys = {f.name for f in fields(RuntimeConfig) if f.metadata.get("models")} | set(_WARMUP_RUNTIME_KEYS)
    return {flag: f for flag, f in config_flags(RuntimeConfig).items() if f.key in keys}


_WARMUP_JOB = "The job (as difaug generate takes it)"
_WARMUP_MODELS = "How the workers build the models"


@app.command("warmup")
@add_options([*flag_options(job_flags(), _WARMUP_JOB), *flag_options(warmup_flags(), _WARMUP_MODELS)])
def warmup(
    config: Path | None = typer.Option(None, "--config", help="YAML job file; flags override its keys."),
    manifest: str | None = typer.Option(None, "--manifest", "-m", help="Manifest (.csv/.jsonl/.parquet)."),
    out: str | None = typer.Option(
        None, "--out", "-o", help="The job's run directory: its cache folder is the default one."
    ),
    **flags: Any,
) -> None:
    """Compile every shape a job will use into its compile cache folder once, so the workers of a
    fresh cluster load compiled graphs instead of each compiling them cold (about 90 s per shape
    on a GPU).

    The shapes come from the manifest's image headers: one generator batch (`--batch-size`, with
    its VAE decode in chunks of `--vae-batch`) per working size, and one drift-scoring pass per
    size the scorer sees (score diffseg). Each is compiled with the job's own settings on this
    machine's device, so run it where the workers run (the same GPU kind, torch, triton and CUDA),
    with the job file and flags `difaug generate` gets. The cache folder is --compile-cache (or
    `compile_cache_dir:`), else OUT/.difaug-compile-cache; pass the same to generate.

    Exit codes: 0 = the cache is filled; 2 = the job's workers would not compile (compile off,
    auto on a CPU or for a short job, offload, cache_interval > 1), a bad flag, config or manifest,
    or a compilation that failed.

    Example:

        difaug models warmup --config pipelines/pascal5i-fold0-hed.yaml --compile-cache /shared/difaug-cache
        difaug generate --config pipelines/pascal5i-fold0-hed.yaml --compile-cache /shared/difaug-cache
    """
    from difaug.core.config import resolve_job
    from difaug.run.warmup import warm_up

    # OUT only names the default cache folder, which --compile-cache replaces.
    job = resolve_job(config, manifest=manifest, out=out or flags.get("compile_cache_dir"), **flags)
    report = warm_up(job, on_event=_draw_warmup)
    _draw_report(report)


def _draw_warmup(event: Any) -> None:
    from difaug.run.warmup import ShapeWarmed, WarmupStarted

    if isinstance(event, WarmupStarted):
        shapes = event.shapes
        console.print(
            f"{len(shapes.sizes)} working size(s) in {shapes.rows} rows · batch {shapes.batch} · VAE "
            f"decode in chunks of {shapes.vae_chunk} → compile cache {escape(event.cache_dir)}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"compiling on {escape(event.device)}: {escape(event.environment)}",
            highlight=False,
            soft_wrap=True,
        )
        if shapes.skipped:
            row, why = shapes.skipped[0]
            console.print(
                f"[yellow]{len(shapes.skipped)} row(s) left out[/] (the job records them as failures), "
                f"e.g. row {row}: {escape(why)}",
                highlight=False,
                soft_wrap=True,
            )
    elif isinstance(event, ShapeWarmed):
        console.print(
            f"  {event.kind:<8} {event.width:>4}×{event.height:<4} batch {event.batch:<3} "
            f"{event.rows:>7} rows {event.seconds:8.1f} s",
            highlight=False,
            soft_wrap=True,
        )


def _draw_report(report: Any) -> None:
    from difaug.report.text import human_bytes

    console.print(
        f"compile cache {escape(report.cache_dir)}: {human_bytes(report.artifacts_bytes)} of portable "
        f"artefacts, {human_bytes(report.folder_bytes)} in all; {len(report.warmed)} shape(s) in "
        f"{report.seconds:.1f} s (models loaded in {report.load_seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
