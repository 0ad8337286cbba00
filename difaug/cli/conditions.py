"""`difaug conditions` — placeholder until its issue lands."""

from __future__ import annotations

from difaug.cli._common import fail


def conditions() -> None:
    """Not implemented yet."""
    fail("difaug conditions is not implemented yet")
