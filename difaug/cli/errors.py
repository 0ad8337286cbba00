"""One place that turns errors into one line for the user: difaug's own error types and the OS
errors of a hostile environment (read-only or full disk, a file where a folder should be, …).

Every verb is wrapped by `guard_app` (see `difaug.cli.__init__`), so no verb prints a traceback for
these. Exit codes, the same for every verb:

- 0: everything done;
- 1: the verb ran but some rows failed or were refused (listed in its output);
- 2: nothing could start or finish — a bad flag, config, manifest or path, or an OS error.

Anything else (a real bug) still gives a traceback: hiding it would help nobody.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from difaug.cli._common import fail

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_CANNOT_START = 2

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


def _library_errors() -> tuple[type[BaseException], ...]:
    """difaug's own "this cannot work, here is why" errors; imported on first use (they pull in
    heavy modules) and only those already imported can have been raised."""
    import sys

    found: list[type[BaseException]] = []
    for module, names in (
        ("difaug.config", ("ConfigError",)),
        ("difaug.manifest", ("ManifestError",)),
        ("difaug.imageio", ("ImageReadError",)),
        ("difaug.plan", ("PlanError",)),
        ("difaug.models", ("ModelLoadError",)),
        ("difaug.conditions", ("ConditionError",)),
        ("difaug.datasets.common", ("BuildError",)),
        ("difaug.shards", ("ShardError",)),
        ("difaug.adapters.run", ("RunError",)),
        ("difaug.adapters.export", ("ExportError",)),
        ("difaug.adapters.safe_names", ("UnsafePathError",)),
    ):
        mod = sys.modules.get(module)
        found += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(found)


def guard(func: F) -> F:
    """Run a verb; difaug errors and OS errors become one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except OSError as e:
            out = kwargs.get("out")
            fail(describe_os_error(e, str(out) if out else ""), EXIT_CANNOT_START)
        except Exception as e:
            if isinstance(e, _library_errors()):
                fail(str(e), EXIT_CANNOT_START)
            raise

    return wrapper  # type: ignore[return-value]


def guard_app(app: typer.Typer) -> typer.Typer:
    """Wrap every command of `app` and of its sub-apps in `guard`, once."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_difaug_guarded", False):
            info.callback = guard(info.callback)
            info.callback._difaug_guarded = True  # type: ignore[attr-defined]
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_app(group.typer_instance)
    return app
