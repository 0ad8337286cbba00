"""difaug's errors: one base for every fault it can explain, and what an OS error means.

`DifaugError` is the base of every error difaug raises for bad input, a bad setting or an
environment that cannot work (a manifest row, a config key, a locked run directory, a model folder
that is not one). Each carries the exit code the CLI ends with and says, in its message, what to
do; the CLI (`difaug.cli.errors`) prints it as one line, so no verb keeps a list of classes to
catch. `describe_os_error` turns the OS errors of a hostile environment (read-only or full disk, a
file where a folder should be) into the same kind of line; the run directory and every verb use it,
so the advice for a read-only folder or a full disk is written once.
"""

from __future__ import annotations

import errno
import os

# The exit codes every verb ends with (README, "Exit codes").
EXIT_OK = 0
EXIT_ROWS_FAILED = 1  # the verb ran, some rows failed or were refused (listed in its output)
EXIT_CANNOT_START = 2  # nothing could start or finish: a bad flag, config, manifest, path or OS error


class DifaugError(Exception):
    """A fault difaug can explain: the message names what is wrong (the file, the row, the key) and
    what to do. The CLI prints `str(error)` as one line and exits with `exit_code`."""

    exit_code: int = EXIT_CANNOT_START

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message quoted.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# errno → (what happened, what to do about it)
_OS_ADVICE: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or fix its permissions"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose a folder on another disk"),
    errno.ENOTDIR: (
        "a part of the path is a file, not a folder",
        "give a folder path (or a new name) instead of a file",
    ),
    errno.EEXIST: (
        "it exists and is a file, not a folder",
        "give a folder path (or a new name) instead of a file",
    ),
    errno.EISDIR: ("it is a folder, not a file", "give a file path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("the file name is too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer --workers"),
}


def _paths(e: OSError) -> str:
    names = [str(os.fsdecode(n)) for n in (e.filename, e.filename2) if n is not None]
    return " → ".join(names)


def describe_os_error(e: OSError, context: str = "") -> str:
    """One line: the path, what went wrong and what to do (`e.strerror` when the errno is unusual).

    A failed `write()` (a full disk) carries no file name; `context` (the verb's output folder)
    then says where."""
    what, todo = _OS_ADVICE.get(
        e.errno or -1, (e.strerror or str(e) or type(e).__name__, "check the path and retry")
    )
    if isinstance(e, FileExistsError) and e.errno is None:
        what, todo = _OS_ADVICE[errno.EEXIST]
    where = _paths(e)
    if where:
        return f"cannot use {where}: {what}; {todo}"
    if context:
        return f"cannot write under {context}: {what}; {todo}"
    return f"{what} ({e}); {todo}"
