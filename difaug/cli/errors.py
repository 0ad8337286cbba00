"""One place that turns errors into one line for the user: difaug's own error types and the OS
errors of a hostile environment (read-only or full disk, a file where a folder should be, …).

Every verb is wrapped by `guard_app` (see `difaug.cli.__init__`), so no verb prints a traceback for
these and no verb catches them itself. Exit codes (`difaug.core.errors.EXIT_*`), the same for every verb:

- 0: everything done;
- 1: the verb ran but some rows failed or were refused (listed in its output);
- 2: nothing could start or finish — a bad flag, config, manifest or path, or an OS error;
- 130 / 143: interrupted by SIGINT (Ctrl-C) / SIGTERM (OUT/summary.json says what was done).

Anything else (a real bug) still gives a traceback: hiding it would help nobody.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from difaug.cli._common import fail
from difaug.core.errors import EXIT_CANNOT_START, DifaugError, describe_os_error

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def guard(func: F) -> F:
    """Run a verb; difaug errors and OS errors become one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (`difaug.run.cluster.Terminated`)
            name, code = getattr(e, "signal_name", "SIGINT"), getattr(e, "exit_code", EXIT_INTERRUPTED)
            fail(f"interrupted ({name}); what was done is kept, a rerun resumes", code)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
            # No verb exits through sys.exit(0): this is a third-party signal handler (dask_jobqueue's
            # SIGINT one calls sys.exit()), and an interrupt is never "everything done".
            fail("interrupted (SIGINT); what was done is kept, a rerun resumes", EXIT_INTERRUPTED)
        except OSError as e:
            out = kwargs.get("out")
            fail(describe_os_error(e, str(out) if out else ""), EXIT_CANNOT_START)
        except DifaugError as e:
            fail(str(e), e.exit_code)

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
