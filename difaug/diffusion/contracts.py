"""What the shard task passes to a generator and gets back: `WorkItem` in, `AuxResult` out, and the
`Generator` protocol between them (with its optional `ReportsWarmup`).

`difaug.diffusion.sampler.AuxGenerator` (the real pipeline) and
`difaug.testing.standins.SleepGenerator` (a stand-in) implement it; so can any object a test or a
user passes as a factory's result. The shard task (`difaug.run`) uses its generator only through
this protocol and checks it with `difaug.core.contracts.check_contract` before any shard work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, eq=False)
class WorkItem:
    """One auxiliary image to make. `condition` is H×W×3 uint8 at the working size;
    `out_size` is the support image's own (width, height)."""

    sample_id: str
    aux_index: int
    seed: int
    prompt: str
    negative_prompt: str
    condition: np.ndarray = field(repr=False)
    out_size: tuple[int, int]

    @property
    def key(self) -> str:
        return f"{self.sample_id}/{self.aux_index}"


@dataclass(eq=False)
class AuxResult:
    item: WorkItem
    image: np.ndarray  # H×W×3 uint8 at item.out_size


@runtime_checkable
class Generator(Protocol):
    """Makes auxiliary images from work items.

    `batch_size`: how many items one device call takes (the shard task forms batches of this
    size, one condition shape each); `provenance`: the shard columns that say what made the
    images (base_model, controlnet_model, scheduler, steps, guidance_scale, controlnet_scale,
    dtype, device); `generate(items)`: one result per item, in the items' order."""

    batch_size: int
    provenance: dict[str, Any]

    def generate(self, items: Sequence[WorkItem]) -> Sequence[AuxResult]: ...


@runtime_checkable
class ReportsWarmup(Protocol):
    """Optional for a `Generator`: the seconds spent so far in first calls of each batch shape
    (torch.compile's warm-up) and the warnings so far (compilation that failed, a cache not
    saved). The shard task records what a shard added to both in its marker; a generator without
    them records no warm-up and no warnings."""

    warmup_seconds: float
    warnings: list[str]
