"""`difaug.cli.errors`: OS errors and difaug's own errors → one line naming the path and the fix,
with the error's exit code, for every verb; real bugs still raise."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli.errors import guard
from difaug.core.errors import DifaugError


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


class _RowsRefused(DifaugError):
    exit_code = 1


@pytest.mark.parametrize(
    ("error", "code"),
    [(DifaugError("m.csv: no rows; add one"), 2), (_RowsRefused("3 rows refused; see above"), 1)],
)
def test_a_difaug_error_in_a_verb_is_one_line_with_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: DifaugError, code: int
) -> None:
    import difaug.core.config

    def resolve_job(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(difaug.core.config, "resolve_job", resolve_job)
    res = CliRunner().invoke(app, ["generate", "-m", "m.csv", "-o", str(tmp_path / "out")])
    assert res.exit_code == code
    assert res.output == f"error: {error}\n" and "Traceback" not in res.output
    assert not isinstance(res.exception, DifaugError)  # turned into typer's exit, not raised on


def test_any_other_exception_in_a_verb_still_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import difaug.core.config

    def resolve_job(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(difaug.core.config, "resolve_job", resolve_job)
    res = CliRunner().invoke(app, ["generate", "-m", "m.csv", "-o", str(tmp_path / "out")])
    assert isinstance(res.exception, ZeroDivisionError) and res.exit_code == 1
    with pytest.raises(ZeroDivisionError, match="a bug"):
        CliRunner().invoke(app, ["generate", "-m", "m.csv", "-o", str(tmp_path)], catch_exceptions=False)


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
