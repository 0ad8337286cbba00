"""What an export did: the files, every support's coverage, and what was skipped or removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difaug.core.errors import DifaugError


class ExportError(DifaugError, ValueError):
    """The run cannot be exported in this layout; the message names the rows and what to do."""


@dataclass(frozen=True)
class SupportCoverage:
    """One support (manifest row) that did not get all X files, and why."""

    sample_id: str
    row: int | None
    image: str
    class_id: int | None
    have: int
    expected: int
    reasons: tuple[str, ...]
    filtered: int = 0  # aux images left out by min_drift_iou


@dataclass(frozen=True)
class SkippedRow:
    sample_id: str
    aux_index: int  # -1: the support's condition image
    reason: str

    @property
    def what(self) -> str:
        return "condition" if self.aux_index < 0 else f"aux {self.aux_index}"


@dataclass
class ExportResult:
    layout: str
    out: Path
    image_format: str
    expected_per_support: int
    run: str = ""
    min_drift_iou: float | None = None
    with_conditions: bool = False
    written: int = 0  # files created or replaced
    unchanged: int = 0  # files already holding the right bytes
    conditions: int = 0  # condition images among the files
    supports: int = 0
    complete: int = 0
    incomplete: list[SupportCoverage] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)  # sample_id → aux images below the threshold
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    # Shards of the plan without a completion marker: their rows have no images (and no failure
    # record) yet; `difaug generate` with the same arguments finishes them.
    unfinished_shards: list[dict[str, Any]] = field(default_factory=list)
    not_generated: int = 0
    # The report's totals over every run exported into `out` (this one included), once written.
    folder_total: dict[str, Any] = field(default_factory=dict)
    # Every file this export holds in `out` (written or already right): relative POSIX path →
    # blake2b digest of its bytes. Recorded in the report; the next export of the run removes
    # those it does not write.
    paths: dict[str, str] = field(default_factory=dict)
    # What this call did to the files of the run's earlier export into `out` that it does not write:
    removed: list[str] = field(default_factory=list)  # deleted (relative paths)
    kept_stale: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: left in place
    # The run's earlier export into `out` recorded no file list (a report before version 3): files
    # of it that this export does not write could not be told apart and were left.
    earlier_unrecorded: bool = False
    lock_taken_over: str = ""  # the owner of a lock on `out` left by a dead process, taken over

    @property
    def files(self) -> int:
        return self.written + self.unchanged

    @property
    def missing_not_filtered(self) -> list[SupportCoverage]:
        """Incomplete supports that lack images for a reason other than the drift threshold."""
        return [c for c in self.incomplete if c.have + c.filtered < c.expected]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["files"] = self.files
        return d
