"""What the CLI tests share: the options a verb declares."""

from __future__ import annotations

import typer

from difaug.cli import app


def command_options(*path: str) -> set[str]:
    """Every option string of the command at `path` (`"models", "warmup"`), as typer builds it."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
