"""`difaug generate` — placeholder until its issue lands."""

from __future__ import annotations

from difaug.cli._common import fail


def generate() -> None:
    """Not implemented yet."""
    fail("difaug generate is not implemented yet")
