"""`difaug.core.errors`: one base for every error difaug explains, and OS errors as one line that
names the path and the fix."""

from __future__ import annotations

import ast
import errno
import importlib
import os
from pathlib import Path

import pytest

import difaug
from difaug.core.errors import EXIT_CANNOT_START, DifaugError, describe_os_error

PACKAGE = Path(difaug.__file__).parent


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class named `…Error` defined anywhere in difaug."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append((module, node.name))
    return found


def test_every_error_class_is_a_difaug_error() -> None:
    classes = _error_classes()
    assert ("difaug.core.config", "ConfigError") in classes and len(classes) >= 10
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        if cls is not DifaugError:
            assert issubclass(cls, DifaugError), f"{module}.{name} does not subclass DifaugError"
            assert cls.exit_code in (1, 2), f"{module}.{name}.exit_code = {cls.exit_code}"


def test_message_is_the_text_even_for_a_key_error() -> None:
    class Missing(DifaugError, KeyError):
        pass

    assert str(Missing("no aux image k=3 for sample a; export it first")) == (
        "no aux image k=3 for sample a; export it first"
    )
    assert str(DifaugError("a", "b")) == "('a', 'b')"
    assert DifaugError.exit_code == EXIT_CANNOT_START == 2


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), ("/data/out", "permission denied")),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro"), ("/mnt/ro", "read-only", "writable")),
        (OSError(errno.ENOSPC, "No space left on device", "/x/p.json"), ("/x/p.json", "free some space")),
        (FileExistsError(errno.EEXIST, "File exists", "/x/notes.txt"), ("/x/notes.txt", "not a folder")),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/f/run"), ("/x/f/run", "is a file")),
        (OSError(errno.EIO, "Input/output error", "/x/y"), ("/x/y", "Input/output error", "retry")),
        (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), ("/a → /b", "cross-device")),
    ],
)
def test_describe_os_error_names_path_and_fix(error: OSError, words: tuple[str, ...]) -> None:
    line = describe_os_error(error)
    assert "\n" not in line and line.startswith("cannot use ")
    for w in words:
        assert w in line


def test_write_error_without_a_file_name_names_the_context() -> None:
    line = describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "runs/demo")
    assert (
        line
        == "cannot write under runs/demo: no space left on the device; free some space or choose a folder on another disk"
    )
    bare = describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert bare.startswith("no space left on the device (") and "runs/demo" not in bare


def test_file_exists_without_errno_reads_as_a_file_in_the_way() -> None:
    assert describe_os_error(FileExistsError("x"), "out").startswith(
        "cannot write under out: it exists and is a file"
    )
