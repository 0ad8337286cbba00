"""How every verb's `--help` reads: docstrings as paragraphs, flags without a type.

typer's rich help keeps the single line breaks of a docstring and then wraps each line to the
terminal on its own, so a docstring wrapped by hand at 100 columns comes out ragged at any other
width ("…a shard that kept" / "failing; …"). `reflow` joins the lines of each prose paragraph, so
rich wraps the whole paragraph once; indented lines (examples) keep their breaks. typer also shows
a type beside every option, `<bool>` for a flag that takes no value (`--deep`, `--help`); a flag's
type column stays empty here.

`use_help_classes` sets both on every command and group of an app, once (`difaug.cli.__init__`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption


def reflow(text: str | None) -> str | None:
    """`text` with the lines of each paragraph joined; a line that is indented or starts a list
    item (`- `) keeps its line break, and blank lines still separate paragraphs."""
    if not text:
        return text
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            keeps_break = line[:1].isspace() or line.startswith("- ")
            if lines and not keeps_break and not lines[-1][:1].isspace():
                lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _flags_untyped(params: Iterable[Any]) -> None:
    # typer's rich help prints `metavar` in the type column when one is set; a flag has no value.
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class _HelpText:
    """Reflowed help, and flags without a type, for a typer command or group."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=reflow(help), **kwargs)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_untyped(self.get_params(ctx))  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)  # type: ignore[misc]


class HelpCommand(_HelpText, TyperCommand):
    """A verb (`difaug generate`, `difaug manifest build pascal5i`, …)."""


class HelpGroup(_HelpText, TyperGroup):
    """A group of verbs (`difaug`, `difaug manifest`, …)."""


def use_help_classes(app: typer.Typer) -> typer.Typer:
    """Make every command and group of `app` (sub-apps included) render its help as above."""
    if not isinstance(app.info.cls, type):  # not chosen: typer's placeholder for TyperGroup
        app.info.cls = HelpGroup
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer's default, not a class a verb chose
            info.cls = HelpCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_help_classes(group.typer_instance)
    return app
