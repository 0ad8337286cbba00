"""`difaug export` — placeholder until its issue lands."""

from __future__ import annotations

from difaug.cli._common import fail


def export() -> None:
    """Not implemented yet."""
    fail("difaug export is not implemented yet")
