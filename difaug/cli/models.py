"""`difaug models` — model bundles: build the tiny offline one, show what a config resolves to."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from difaug.cli._common import console, fail

app = typer.Typer(
    help="Model weights: build a tiny random bundle for offline tests and demos.",
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
