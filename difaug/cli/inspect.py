"""`difaug inspect` — placeholder until its issue lands."""

from __future__ import annotations

from difaug.cli._common import fail


def inspect() -> None:
    """Not implemented yet."""
    fail("difaug inspect is not implemented yet")
