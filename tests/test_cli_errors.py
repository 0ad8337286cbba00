"""`difaug.cli.errors`: OS errors and difaug's own errors → one line naming the path and the fix,
exit 2, for every verb; real bugs still raise."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli.errors import describe_os_error, guard


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), ("/data/out", "permission denied")),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro"), ("/mnt/ro", "read-only", "writable")),
        (OSError(errno.ENOSPC, "No space left on device", "/x/p.json"), ("/x/p.json", "free some space")),
        (FileExistsError(errno.EEXIST, "File exists", "/x/notes.txt"), ("/x/notes.txt", "not a folder")),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/f/run"), ("/x/f/run", "is a file")),
        (OSError(errno.EIO, "Input/output error", "/x/y"), ("/x/y", "Input/output error", "retry")),
    ],
)
def test_describe_os_error_names_path_and_fix(error: OSError, words: tuple[str, ...]) -> None:
    line = describe_os_error(error)
    assert "\n" not in line
    for w in words:
        assert w in line


def test_write_error_without_a_file_name_names_the_context() -> None:
    line = describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "runs/demo")
    assert line.startswith("cannot write under runs/demo: no space left")


def test_guard_exit_codes() -> None:
    from difaug.inputs.manifest import ManifestError

    def raises(e: BaseException) -> None:
        raise e

    with pytest.raises(typer.Exit) as ex:
        guard(raises)(OSError(errno.EROFS, "Read-only file system", "/ro"))
    assert ex.value.exit_code == 2
    with pytest.raises(typer.Exit) as ex:
        guard(raises)(ManifestError("m.csv: bad"))
    assert ex.value.exit_code == 2
    with pytest.raises(typer.Exit) as ex:  # a verb's own exit code passes through
        guard(raises)(typer.Exit(1))
    assert ex.value.exit_code == 1
    with pytest.raises(ZeroDivisionError):  # a bug is not hidden behind a message
        guard(raises)(ZeroDivisionError())


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    out = [((*prefix, c.name or c.callback.__name__), c.callback) for c in group.registered_commands]
    for g in group.registered_groups:
        out += _commands(g.typer_instance, (*prefix, g.name))
    return out


def test_every_verb_is_guarded() -> None:
    verbs = _commands(app)
    assert len(verbs) >= 8
    for name, callback in verbs:
        assert getattr(callback, "_difaug_guarded", False), name


def test_conditions_verb_into_a_file_path(tmp_path: Path, demo_manifest: Path) -> None:
    target = tmp_path / "file.png"
    target.write_bytes(b"keep")
    res = CliRunner().invoke(
        app, ["conditions", "-m", str(demo_manifest), "-c", "seg", "-o", str(target), "-n", "1"]
    )
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert f"cannot use {target}" in line and "not a folder" in line and "Traceback" not in line
    assert target.read_bytes() == b"keep"


def test_manifest_build_into_a_file_path(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", (64, 64)).save(root / "images" / "a.jpg")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 8:56] = 1
    Image.fromarray(mask).save(root / "masks" / "a.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    args = ["manifest", "build", "folder", "--root", str(root), "--class-name", "bird", "--out"]
    res = CliRunner().invoke(app, [*args, str(blocker / "m.csv")])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert f"cannot use {blocker}: it exists and is a file, not a folder; give a folder path" in line
    assert blocker.read_text() == "x"
    res = CliRunner().invoke(app, [*args, str(tmp_path / "ok.csv")])  # the same build works elsewhere
    assert res.exit_code == 0, res.output


def test_generate_help_documents_exit_codes() -> None:
    res = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    flat = " ".join(res.output.split())
    assert (
        "0 = every row is done" in flat
        and "1 = some rows failed" in flat
        and "2 = the job could not start" in flat
    )
