"""What the shard task needs from the models it drives: the generator and condition contracts.

The worker (`difaug.worker`) builds one generator and one condition maker per process from
picklable factories and uses them only through these protocols. `difaug.generate.AuxGenerator`
(the real pipeline), `difaug.testing.SleepGenerator` (a stand-in) and the conditions of
`difaug.conditions` implement them; so can any object a test or a user passes as a factory's
result. `load_models` checks a factory's result against them, so a wrong one fails with a clear
message before any shard work.

This module imports nothing of difaug at run time (the types are for the type checker only), so
every layer may depend on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from difaug.conditions import ConditionInput
    from difaug.generate import WorkItem


@runtime_checkable
class GeneratedImage(Protocol):
    """One result: the work item it answers and its image (`H×W×3 uint8` at `item.out_size`)."""

    item: WorkItem
    image: np.ndarray


@runtime_checkable
class Generator(Protocol):
    """Makes auxiliary images from work items.

    `batch_size`: how many items one device call takes (the shard task forms batches of this
    size, one condition shape each); `provenance`: the shard columns that say what made the
    images (base_model, controlnet_model, scheduler, steps, guidance_scale, controlnet_scale,
    dtype, device); `generate(items)`: one result per item, in the items' order."""

    batch_size: int
    provenance: dict[str, Any]

    def generate(self, items: Sequence[WorkItem]) -> Sequence[GeneratedImage]: ...


@runtime_checkable
class ReportsWarmup(Protocol):
    """Optional for a `Generator`: the seconds spent so far in first calls of each batch shape
    (torch.compile's warm-up) and the warnings so far (compilation that failed, a cache not
    saved). The shard task records what a shard added to both in its marker; a generator without
    them records no warm-up and no warnings."""

    warmup_seconds: float
    warnings: list[str]


@runtime_checkable
class ConditionMaker(Protocol):
    """Makes ControlNet conditions: one `H×W×3 uint8` image per input, same order, at each input's
    working size. `fallbacks` counts what was approximated (e.g. a class with no ADE colour), by
    name; it only grows, and the shard task records what a shard added."""

    fallbacks: Counter[str]

    def __call__(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]: ...


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
        f"{made_by} returned {type(obj).__name__}, which is not a difaug.contracts.{contract.__name__}"
        f" (missing: {', '.join(missing) or '?'})"
    )
