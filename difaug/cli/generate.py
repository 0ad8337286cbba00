"""`difaug generate`: run (or resume) a generation job into a run directory of Parquet shards."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, NamedTuple

import typer
from rich.markup import escape

from difaug.cli._common import add_options, console

_EXECUTION = "Execution (may change between a run and its resume)"
_JOB = "What is generated (a rerun must match)"


class Flag(NamedTuple):
    """A flag that sets one config key: the key, its type and help. Every flag defaults to None =
    "not given", so the YAML file's value (or the default) stands."""

    key: str
    kind: type
    help: str


def config_flags(config: type) -> dict[str, Flag]:
    """The flags of a config dataclass, derived from its fields (`difaug.core.config.setting`):
    a new field gets its flag without a list to update here; YAML-only keys (`slurm`) have none."""
    from dataclasses import fields

    from difaug.core.config import cli_flag

    kinds = {"str": str, "int": int, "float": float, "bool": bool, "bool | str": bool}
    return {
        flag: Flag(f.name, kinds[str(f.type)], f.metadata["help"])
        for f in fields(config)
        if (flag := cli_flag(f)) is not None
    }


def job_flags() -> dict[str, Flag]:
    """JobConfig's flags and the plan's `--limit`: fingerprinted into the plan."""
    from difaug.core.config import JobConfig

    return {
        **config_flags(JobConfig),
        "--limit": Flag("limit", int, "Only the first N manifest rows (part of the plan)."),
    }


def runtime_flags() -> dict[str, Flag]:
    """RuntimeConfig's flags and `--overwrite`: free to change on resume."""
    from difaug.core.config import RuntimeConfig

    overwrite = Flag(
        "overwrite",
        bool,
        "Delete the files difaug wrote in OUT (plan, shards, markers, summary) and start over; other files stay.",
    )
    return {**config_flags(RuntimeConfig), "--overwrite/--no-overwrite": overwrite}


def flag_options(flags: dict[str, Flag], panel: str) -> list[inspect.Parameter]:
    """The typer options of a flag table, named after the keys they set."""
    return [
        inspect.Parameter(
            f.key,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag, help=f.help, rich_help_panel=panel),
            annotation=f.kind | None,
        )
        for flag, f in flags.items()
    ]


@add_options([*flag_options(job_flags(), _JOB), *flag_options(runtime_flags(), _EXECUTION)])
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
    import shlex
    import sys

    from difaug.cli._progress import GenerateView, print_summary, warmup_line
    from difaug.core.config import resolve_job
    from difaug.run.cluster import interrupts_raise
    from difaug.run.driver import run

    command = shlex.join(["difaug", *sys.argv[1:]]) if sys.argv[1:2] == ["generate"] else ""
    job = resolve_job(config, manifest=manifest, out=out, **flags)
    with interrupts_raise(), GenerateView(console, bar=job.runtime.progress) as view:
        summary = run(job, on_event=view, force_unlock=force_unlock, command=command)
    print_summary(summary, console)
    line = warmup_line(view.compile_cache, view.warmups)
    if line:
        console.print(escape(line), highlight=False)

    if summary.stopped and summary.failed_shards and not summary.shards_done:
        raise typer.Exit(2)  # OUT could not be written at all: as if the job could not start
    raise typer.Exit(0 if summary.ok else 1)
