"""Printing, error and option-declaring helpers shared by the CLI modules (no library logic here)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

Command = TypeVar("Command", bound=Callable[..., Any])


def add_options(declared: Iterable[inspect.Parameter]) -> Callable[[Command], Command]:
    """Give a typer command options declared once elsewhere (shared by several commands, or derived
    from the config fields, `difaug.cli.generate.flag_options`): in the signature typer reads (and so in `--help`) they follow the command's own
    parameters, except its keyword-only ones (after `*`), which come last; their values arrive in
    the command's `**options`. A name declared twice fails at import."""
    extra = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in declared]

    def decorate(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        last = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        first = [p for p in params if p not in last]
        command.__signature__ = own.replace(parameters=[*first, *extra, *last])  # type: ignore[attr-defined]
        return command

    return decorate


def options_of(declaration: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of a function that only declares options, written as a typer signature."""
    return list(inspect.signature(declaration, eval_str=True).parameters.values())


def escape_text(value: object, max_chars: int = 500) -> str:
    """Data (manifest text, paths, reasons) for a rich markup string: one visible line, escaped."""
    from difaug.core.text import display_text

    return escape(display_text(value, max_chars))


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear error line (no traceback) and exit with `code`."""
    from difaug.core.text import display_text

    # escape: messages carry things like "difaug[cuda]" that rich would eat as markup;
    # display_text: and manifest text (newlines, escape sequences, RTL marks) that must stay one line
    # soft_wrap: one line, however narrow the terminal (it wraps it, rich does not break it up)
    err_console.print(
        f"[bold red]error:[/] {escape(display_text(message, 2000))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None] | None]:
    """A `difaug.core.parallel.ProgressFn` that draws a transient bar per label on stderr, or None when
    stderr is not a terminal (logs and pipes get no bar)."""
    if not err_console.is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        yield update
