"""`difaug generate`: run (or resume) a generation job into a run directory of Parquet shards."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, NamedTuple

import typer

from difaug.cli._common import add_options, console, fail

_EXECUTION = "Execution (may change between a run and its resume)"
_JOB = "What is generated (a rerun must match)"


class Flag(NamedTuple):
    """A flag that sets one config key: its type and help. Every flag defaults to None = "not
    given", so the YAML file's value (or the default) stands."""

    kind: type
    help: str


JOB_FLAGS: dict[str, Flag] = {  # JobConfig (and the plan's `limit`): fingerprinted into the plan
    "--condition": Flag(str, "seg, hed or scribble."),
    "--condition-style": Flag(str, "diffss (as the paper) or upstream."),
    "--num-aux": Flag(int, "Auxiliary images per support sample."),
    "--seed": Flag(int, "Job seed; each image's seed derives from it."),
    "--resolution": Flag(int, "Working short side (multiple of 64)."),
    "--detect-resolution": Flag(int, "Short side HED runs at (hed, scribble); DifFSS: 512."),
    "--model": Flag(str, "Model bundle: a folder made by `difaug models make-tiny`."),
    "--base-model": Flag(str, "SD1.5 hub id or diffusers folder."),
    "--controlnet": Flag(str, "ControlNet hub id or folder (default: per condition)."),
    "--hed-weights": Flag(str, "HED weights: hub repo, folder or ControlNetHED.pth."),
    "--scheduler": Flag(str, "unipc, ddim, euler, euler_a, dpmpp_2m, pndm, lcm."),
    "--steps": Flag(int, "Denoising steps."),
    "--guidance-scale": Flag(float, "Classifier-free guidance scale."),
    "--controlnet-scale": Flag(float, "ControlNet conditioning scale."),
    "--prompt-template": Flag(str, "Prompt with {class_name}."),
    "--negative-prompt": Flag(str, "Negative prompt."),
    "--lcm-lora": Flag(str, "LCM-LoRA id or folder (4-8 steps)."),
    "--image-format": Flag(str, "png or jpeg for the aux images."),
    "--jpeg-quality": Flag(int, "JPEG quality (image-format jpeg)."),
    "--shard-size": Flag(int, "Manifest rows per shard (one Dask task each)."),
    "--score": Flag(str, "diffseg (DiffSeg drift scores in the shards) or none."),
    "--limit": Flag(int, "Only the first N manifest rows (part of the plan)."),
    "--cache-interval": Flag(int, "DeepCache: deep UNet features every k-th step (1 = off; changes images)."),
}
RUNTIME_FLAGS: dict[str, Flag] = {  # RuntimeConfig (and `overwrite`): free to change on resume
    "--batch-size": Flag(int, "Images per generator call."),
    "--cluster": Flag(str, "sync, local, cuda or slurm."),
    "--scheduler-address": Flag(str, "Use a running Dask scheduler, e.g. tcp://host:8786."),
    "--workers": Flag(int, "Worker processes (local, slurm; cuda: one per GPU)."),
    "--threads-per-worker": Flag(int, "Torch CPU threads per worker."),
    "--retries": Flag(int, "Retries of a failed shard task."),
    "--device": Flag(str, "auto, cpu, cuda, cuda:1 …"),
    "--dtype": Flag(str, "auto, float32, float16, bfloat16."),
    "--compile/--no-compile": Flag(
        bool, "torch.compile UNet, ControlNet, VAE decoder (default auto: CUDA jobs of >= 1000 images)."
    ),
    "--compile-mode": Flag(str, "default, reduce-overhead (CUDA graphs) or max-autotune."),
    "--compile-cache": Flag(str, "Compile cache folder (default OUT/.difaug-compile-cache)."),
    "--vae-batch": Flag(int, "Latents per VAE decode call."),
    "--encode-threads": Flag(
        int, "PNG/JPEG encoder threads per shard task, two in flight per worker (0 = from the cores)."
    ),
    "--offload/--no-offload": Flag(bool, "CPU offload (small GPUs)."),
    "--progress/--no-progress": Flag(bool, "Show the progress bar."),
    "--overwrite/--no-overwrite": Flag(
        bool,
        "Delete the files difaug wrote in OUT (plan, shards, markers, summary) and start over; other files stay.",
    ),
    "--max-side": Flag(int, "Refuse rows whose working size has a longer side (px; default 8192)."),
    "--max-aspect": Flag(float, "Refuse rows whose image is more elongated (long:short; default 16)."),
    "--max-pixels": Flag(int, "Refuse rows whose image has more pixels (default 150 M)."),
}


def flag_options(flags: dict[str, Flag], panel: str) -> list[inspect.Parameter]:
    """The typer options of a flag table, named after their flags (`--num-aux` → `num_aux`)."""
    return [
        inspect.Parameter(
            flag.split("/")[0].removeprefix("--").replace("-", "_"),
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag, help=f.help, rich_help_panel=panel),
            annotation=f.kind | None,
        )
        for flag, f in flags.items()
    ]


@add_options([*flag_options(JOB_FLAGS, _JOB), *flag_options(RUNTIME_FLAGS, _EXECUTION)])
def generate(
    config: Path | None = typer.Option(None, "--config", help="YAML job file; flags override its keys."),
    manifest: str | None = typer.Option(None, "--manifest", "-m", help="Manifest (.csv/.jsonl/.parquet)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory (plan, shards/, stats/)."),
    *,
    force_unlock: bool = typer.Option(
        False,
        "--force-unlock",
        help="Take OUT's lock although another host's run is recorded in it (only when that run is gone).",
        rich_help_panel=_EXECUTION,
    ),
    **flags: Any,
) -> None:
    """Generate auxiliary images for every manifest row into OUT (resumable: a rerun does only
    the shards that are not verified done). One run at a time holds OUT (a lock file names it).

    Exit codes: 0 = every row is done; 1 = some rows failed (bad input, or a shard that kept
    failing; listed in OUT/summary.json); 2 = the job could not start, and the plan was not
    written when the fault was known before it — bad flag or config, empty manifest, OUT not a
    writable folder, disk full, OUT locked by another run, or a different job already in OUT (one
    line says which and what to do) — or OUT could not be written before any shard finished.

    Example:

        difaug generate --config pipelines/demo.yaml --model models/tiny --out runs/demo
    """
    flags["compile_cache_dir"] = flags.pop("compile_cache")
    import shlex
    import sys

    from difaug.config import ConfigError, resolve_job
    from difaug.manifest import ManifestError
    from difaug.models import ModelLoadError
    from difaug.rundir import RunDirError

    command = shlex.join(["difaug", *sys.argv[1:]]) if sys.argv[1:2] == ["generate"] else ""
    try:
        job = resolve_job(config, manifest=manifest, out=out, **flags)
        from difaug.cli._progress import GenerateView, print_summary
        from difaug.runner import run

        with GenerateView(console, bar=job.runtime.progress) as view:
            summary = run(job, on_event=view, force_unlock=force_unlock, command=command)
    except (ConfigError, ManifestError, RunDirError, ModelLoadError) as e:  # PlanError, LockError, …
        fail(str(e))
    print_summary(summary, console)

    if summary.stopped and summary.failed_shards and not summary.shards_done:
        raise typer.Exit(2)  # OUT could not be written at all: as if the job could not start
    raise typer.Exit(0 if summary.ok else 1)
