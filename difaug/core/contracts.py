"""`check_contract`: refuse an object that lacks a member of a protocol, naming the missing ones.

The protocols live beside the records they pass (`difaug.conditions.ConditionMaker`,
`difaug.diffusion.contracts.Generator`); the shard task checks each factory's result with this
before any shard work, so a wrong factory fails with a clear message instead of an AttributeError
deep inside a batch.
"""

from __future__ import annotations

from typing import Any


def check_contract(obj: Any, contract: type, made_by: str) -> None:
    """Refuse `obj` unless it has every member of `contract`, naming the missing ones."""
    if isinstance(obj, contract):
        return
    members = sorted(
        name
        for name in (*getattr(contract, "__annotations__", {}), *vars(contract))
        if not name.startswith("_") or name == "__call__"
    )
    missing = [name for name in members if not hasattr(obj, name)]
    raise TypeError(
        f"{made_by} returned {type(obj).__name__}, which is not a {contract.__module__}.{contract.__name__}"
        f" (missing: {', '.join(missing) or '?'})"
    )
