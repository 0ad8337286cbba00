"""What an OS error means for the user, in one line: the path, what went wrong, what to do.

Used by the run directory (a shard task that cannot write OUT) and by every CLI verb (`cli.errors`),
so the advice for a read-only folder or a full disk is written once.
"""

from __future__ import annotations

import errno
import os

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
