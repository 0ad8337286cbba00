"""The `difaug` command line: a thin typer layer over the library. Each verb lives in its own module."""

from __future__ import annotations

import typer

from difaug import __version__
from difaug.cli import conditions, export, generate, inspect, manifest, models, score, segment
from difaug.cli._help import use_help_classes
from difaug.cli.errors import guard_app

app = typer.Typer(
    name="difaug",
    help="Offline ControlNet data augmentation for few-shot segmentation (DifFSS), on Dask.\n\n"
    "Typical job: [bold]difaug manifest build[/] → [bold]difaug manifest validate[/] → "
    "[bold]difaug generate[/] → [bold]difaug inspect[/] / [bold]difaug export[/].",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(manifest.app, name="manifest")
app.command("conditions")(conditions.conditions)
app.add_typer(models.app, name="models")
app.command("generate")(generate.generate)
app.command("inspect")(inspect.inspect)
app.command("export")(export.export)
app.command("score")(score.score)
app.command("segment")(segment.segment)
# Every verb: difaug's errors and OS errors (read-only OUT, disk full, …) → one line, exit 2;
# and a help text that reads the same at any terminal width.
guard_app(app)
use_help_classes(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"difaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


def main() -> None:
    app()
