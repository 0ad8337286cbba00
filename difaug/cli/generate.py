"""`difaug generate`: run (or resume) a generation job into a run directory of Parquet shards."""

from __future__ import annotations

from pathlib import Path

import typer

from difaug.cli._common import console, fail

_EXECUTION = "Execution (may change between a run and its resume)"
_JOB = "What is generated (a rerun must match)"


def _opt(flag: str, help: str, panel: str = _JOB) -> typer.models.OptionInfo:
    # Every flag defaults to None = "not given", so the YAML file's value (or the default) stands.
    return typer.Option(None, flag, help=help, rich_help_panel=panel)


def _run_opt(flag: str, help: str) -> typer.models.OptionInfo:
    """A flag of the execution panel: `RuntimeConfig`, free to change on resume."""
    return _opt(flag, help, _EXECUTION)


def generate(
    config: Path | None = typer.Option(None, "--config", help="YAML job file; flags override its keys."),
    manifest: str | None = typer.Option(None, "--manifest", "-m", help="Manifest (.csv/.jsonl/.parquet)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory (plan, shards/, stats/)."),
    condition: str | None = _opt("--condition", "seg, hed or scribble."),
    condition_style: str | None = _opt("--condition-style", "diffss (as the paper) or upstream."),
    num_aux: int | None = _opt("--num-aux", "Auxiliary images per support sample."),
    seed: int | None = _opt("--seed", "Job seed; each image's seed derives from it."),
    resolution: int | None = _opt("--resolution", "Working short side (multiple of 64)."),
    detect_resolution: int | None = _opt(
        "--detect-resolution", "Short side HED runs at (hed, scribble); DifFSS: 512."
    ),
    model: str | None = _opt("--model", "Model bundle: a folder made by `difaug models make-tiny`."),
    base_model: str | None = _opt("--base-model", "SD1.5 hub id or diffusers folder."),
    controlnet: str | None = _opt("--controlnet", "ControlNet hub id or folder (default: per condition)."),
    hed_weights: str | None = _opt("--hed-weights", "HED weights: hub repo, folder or ControlNetHED.pth."),
    scheduler: str | None = _opt("--scheduler", "unipc, ddim, euler, euler_a, dpmpp_2m, pndm, lcm."),
    steps: int | None = _opt("--steps", "Denoising steps."),
    guidance_scale: float | None = _opt("--guidance-scale", "Classifier-free guidance scale."),
    controlnet_scale: float | None = _opt("--controlnet-scale", "ControlNet conditioning scale."),
    prompt_template: str | None = _opt("--prompt-template", "Prompt with {class_name}."),
    negative_prompt: str | None = _opt("--negative-prompt", "Negative prompt."),
    lcm_lora: str | None = _opt("--lcm-lora", "LCM-LoRA id or folder (4-8 steps)."),
    image_format: str | None = _opt("--image-format", "png or jpeg for the aux images."),
    jpeg_quality: int | None = _opt("--jpeg-quality", "JPEG quality (image-format jpeg)."),
    shard_size: int | None = _opt("--shard-size", "Manifest rows per shard (one Dask task each)."),
    score: str | None = _opt("--score", "diffseg (DiffSeg drift scores in the shards) or none."),
    limit: int | None = _opt("--limit", "Only the first N manifest rows (part of the plan)."),
    batch_size: int | None = _run_opt("--batch-size", "Images per generator call."),
    cluster: str | None = _run_opt("--cluster", "sync, local, cuda or slurm."),
    scheduler_address: str | None = _run_opt(
        "--scheduler-address", "Use a running Dask scheduler, e.g. tcp://host:8786."
    ),
    workers: int | None = _run_opt("--workers", "Worker processes (local, slurm; cuda: one per GPU)."),
    threads_per_worker: int | None = _run_opt("--threads-per-worker", "Torch CPU threads per worker."),
    retries: int | None = _run_opt("--retries", "Retries of a failed shard task."),
    device: str | None = _run_opt("--device", "auto, cpu, cuda, cuda:1 …"),
    dtype: str | None = _run_opt("--dtype", "auto, float32, float16, bfloat16."),
    compile: bool | None = _run_opt(
        "--compile/--no-compile",
        "torch.compile UNet, ControlNet, VAE decoder (default auto: CUDA jobs of >= 1000 images).",
    ),
    compile_mode: str | None = _run_opt(
        "--compile-mode", "default, reduce-overhead (CUDA graphs) or max-autotune."
    ),
    compile_cache: str | None = _run_opt(
        "--compile-cache", "Compile cache folder (default OUT/.difaug-compile-cache)."
    ),
    vae_batch: int | None = _run_opt("--vae-batch", "Latents per VAE decode call."),
    encode_threads: int | None = _run_opt(
        "--encode-threads",
        "PNG/JPEG encoder threads per shard task, two in flight per worker (0 = from the cores).",
    ),
    cache_interval: int | None = _opt(
        "--cache-interval", "DeepCache: deep UNet features every k-th step (1 = off; changes images)."
    ),
    offload: bool | None = _run_opt("--offload/--no-offload", "CPU offload (small GPUs)."),
    progress: bool | None = _run_opt("--progress/--no-progress", "Show the progress bar."),
    overwrite: bool | None = _run_opt(
        "--overwrite/--no-overwrite",
        "Delete the files difaug wrote in OUT (plan, shards, markers, summary) and start over; other files stay.",
    ),
    force_unlock: bool = typer.Option(
        False,
        "--force-unlock",
        help="Take OUT's lock although another host's run is recorded in it (only when that run is gone).",
        rich_help_panel=_EXECUTION,
    ),
    max_side: int | None = _run_opt(
        "--max-side", "Refuse rows whose working size has a longer side (px; default 8192)."
    ),
    max_aspect: float | None = _run_opt(
        "--max-aspect", "Refuse rows whose image is more elongated (long:short; default 16)."
    ),
    max_pixels: int | None = _run_opt(
        "--max-pixels", "Refuse rows whose image has more pixels (default 150 M)."
    ),
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
    flags = dict(locals())  # first statement: exactly the parameters
    config_file = flags.pop("config")
    flags.pop("force_unlock")
    flags["compile_cache_dir"] = flags.pop("compile_cache")
    import shlex
    import sys

    from difaug.config import ConfigError, resolve_job
    from difaug.manifest import ManifestError
    from difaug.models import ModelLoadError
    from difaug.rundir import RunDirError

    command = shlex.join(["difaug", *sys.argv[1:]]) if sys.argv[1:2] == ["generate"] else ""
    try:
        job = resolve_job(config_file, **flags)
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
