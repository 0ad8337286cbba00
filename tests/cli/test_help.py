"""`difaug.cli._help`: every verb's `--help` reads as paragraphs at any terminal width (no line
broken where the docstring was wrapped by hand) and shows no type for a flag."""

from __future__ import annotations

import itertools

import pytest
import typer
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli._help import reflow


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    paths += [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands]
    for g in group.registered_groups:
        paths += _command_paths(g.typer_instance, (*prefix, g.name))
    return paths


PATHS = _command_paths(app)


def _help(path: tuple[str, ...], width: int) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    return res.output


def _early_breaks(text: str, width: int) -> list[str]:
    """Lines of the description (above the option panels) that end although the next line's first
    word would have fitted: a line break rich did not make, so one kept from the docstring."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Usage:")) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    description = [line.rstrip() for line in lines[start:end]]
    found = []
    for this, after in itertools.pairwise(description):
        prose = this.startswith(" ") and not this.startswith("  ")  # rich's margin, not an example
        if not (prose and after.strip()) or after.startswith("  "):
            continue
        if len(this) + 1 + len(after.split()[0]) <= width - 1:
            found.append(f"{this.strip()!r} / {after.strip()!r}")
    return found


def test_every_command_is_found() -> None:
    assert ("generate",) in PATHS and ("manifest", "build", "fss1000") in PATHS and () in PATHS
    assert len(PATHS) >= 15


@pytest.mark.parametrize("width", [72, 100, 130])
def test_help_has_no_hand_wrapped_lines(width: int) -> None:
    for path in PATHS:
        breaks = _early_breaks(_help(path, width), width)
        assert not breaks, (" ".join(path) or "difaug", breaks)


def test_the_check_finds_a_hand_wrapped_docstring() -> None:
    # The same check on a help rendered without the reflow finds the break it was written for.
    text = " Usage: x\n\n Exit codes: 0 = every row is done; 1 = some rows failed (a shard that kept\n failing)\n╭"
    assert _early_breaks(text, 100) == [
        "'Exit codes: 0 = every row is done; 1 = some rows failed (a shard that kept' / 'failing)'"
    ]


def test_flags_show_no_type() -> None:
    for path in PATHS:
        text = _help(path, 100)
        assert "<bool>" not in text, " ".join(path)
    generate = _help(("generate",), 200)
    assert "--force-unlock" in generate and "<int>" in generate and "<path>" in generate


def test_option_help_is_one_paragraph() -> None:
    # Option help is wrapped by rich in its column; a newline in it would come out ragged there too.
    command = typer.main.get_command(app)

    def walk(cmd) -> list[tuple[str, str]]:
        found = [(p.name, p.help) for p in cmd.params if "\n" in (getattr(p, "help", None) or "")]
        for sub in getattr(cmd, "commands", {}).values():
            found += walk(sub)
        return found

    assert walk(command) == []


def test_reflow_joins_prose_and_keeps_examples_and_lists() -> None:
    doc = "First line\nwraps here.\n\nExample:\n    difaug a\n    difaug b\n\n- one\n- two\nmore"
    assert (
        reflow(doc) == "First line wraps here.\n\nExample:\n    difaug a\n    difaug b\n\n- one\n- two more"
    )
    assert reflow(None) is None and reflow("") == ""


def test_help_imports_no_heavy_library() -> None:
    # `difaug --help` stays instant: torch, numpy, pyarrow & co. load inside the verbs that use them.
    import subprocess
    import sys

    code = (
        "import sys; from difaug.cli import app; from typer.testing import CliRunner; "
        "CliRunner().invoke(app, ['--help']); "
        "print(','.join(m for m in ('torch', 'diffusers', 'numpy', 'PIL', 'pyarrow', 'dask', 'yaml') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
