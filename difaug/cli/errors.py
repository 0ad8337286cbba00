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

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from difaug.cli._common import fail
from difaug.oserrors import describe_os_error

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_CANNOT_START = 2


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
        ("difaug.safe_names", ("UnsafePathError",)),
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
