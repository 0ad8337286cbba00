"""The run directory's records and their JSON: the plan, a shard's marker, the run's summary.

    `Plan`        OUT/difaug.json: job config, manifest reference, shard row ranges (`ShardRange`)
    `ShardStats`  OUT/stats/NNNNN.json, a shard's marker: counts, `Failure`s, the file (`ShardFile`)
    `Summary`     OUT/summary.json: the last run's reconciled counts and failures

Every consumer (driver, report, export, score, tests) takes these records; `to_dict` / `from_dict`
exist only for the JSON files. A plan or marker that does not parse raises `RunDirError` naming
the file and the fix; a summary from another version gives what it has (it is a report).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from difaug.core.errors import DifaugError

PLAN_VERSION = 2  # 2: manifest fingerprinted over its own text (paths as written), markers verified
MARKER_VERSION = 2  # 2: the marker records the shard file's size, rows and sha256


class RunDirError(DifaugError, ValueError):
    """A run directory file that cannot be used as it is; the message names the file and the fix."""


def shard_name(index: int) -> str:
    """The shard's file name stem: `00042` for shards/00042.parquet and stats/00042.json."""
    return f"{index:05d}"


@dataclass(frozen=True)
class ShardRange:
    """A shard: manifest rows `[start, stop)` (1-based), file name `shard_name(index)`."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def num_rows(self) -> int:
        return max(0, self.stop - self.start)

    def __len__(self) -> int:
        return self.num_rows

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int) and self.start <= row < self.stop


def cut(rows: int, shard_size: int) -> list[ShardRange]:
    """Rows 1..`rows` in ranges of `shard_size`, manifest order."""
    return [
        ShardRange(i, start, min(start + shard_size, rows + 1))
        for i, start in enumerate(range(1, rows + 1, shard_size))
    ]


@dataclass(frozen=True)
class Failure:
    """One manifest row that got no images, and why. `shard` is the shard's name ("" = unknown)."""

    row: int | None
    sample_id: str
    stage: str  # manifest, validate, read, condition, encode, task
    reason: str
    shard: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"row": self.row, "sample_id": self.sample_id, "stage": self.stage, "reason": self.reason}
        return d | ({"shard": self.shard} if self.shard else {})

    @classmethod
    def from_dict(cls, d: Any, shard: str = "") -> Failure:
        """Lenient: a summary or marker from another version gives what it has."""
        if not isinstance(d, Mapping):
            return cls(None, "", "", str(d), shard)
        row = d.get("row")
        return cls(
            row if isinstance(row, int) and not isinstance(row, bool) else None,
            str(d.get("sample_id") or ""),
            str(d.get("stage") or ""),
            str(d.get("reason") or "unknown"),
            str(d.get("shard") or shard),
        )


@dataclass(frozen=True)
class ManifestRef:
    """Where the plan's manifest was and what of it was fingerprinted."""

    path: str  # as given
    folder: str  # absolute folder the manifest's relative paths resolve against
    fingerprint: str
    rows: int
    fingerprinted: str = "rows as written in the manifest (relative paths unresolved)"


@dataclass(frozen=True)
class Plan:
    """The plan file. `plan_hash` covers what decides the shards' contents: config fingerprint,
    manifest fingerprint and rows, limit and shard list — not where OUT or the manifest live."""

    config: dict[str, Any]
    config_fingerprint: str
    manifest: ManifestRef
    limit: int
    rows: int
    shard_size: int
    shards: tuple[ShardRange, ...]
    version: int = PLAN_VERSION
    created_by: str = ""
    created: str = ""
    command: str = ""  # the `difaug generate` command line that made it, when run from the CLI
    cwd: str = ""  # …and where it ran
    plan_hash: str = ""

    def __post_init__(self) -> None:
        if not self.plan_hash:
            object.__setattr__(self, "plan_hash", self.compute_hash())

    def compute_hash(self) -> str:
        keep = {
            "version": self.version,
            "config_fingerprint": self.config_fingerprint,
            "limit": self.limit,
            "rows": self.rows,
            "shard_size": self.shard_size,
            "shards": [{"index": s.index, "rows": [s.start, s.stop]} for s in self.shards],
            "manifest": {"fingerprint": self.manifest.fingerprint, "rows": self.manifest.rows},
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    def shard(self, index: int) -> ShardRange:
        return self.shards[index]

    @property
    def num_aux(self) -> int:
        """X, the aux images per sample: held once, in the job config."""
        return int(self.config.get("num_aux") or 0)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["manifest"] = asdict(self.manifest)
        d["shards"] = [{"index": s.index, "rows": [s.start, s.stop]} for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "the plan") -> Plan:
        try:
            m = d["manifest"]
            plan = cls(
                config=dict(d["config"]),
                config_fingerprint=str(d["config_fingerprint"]),
                manifest=ManifestRef(
                    path=str(m["path"]),
                    folder=str(m.get("folder") or ""),
                    fingerprint=str(m["fingerprint"]),
                    rows=int(m["rows"]),
                    fingerprinted=str(m.get("fingerprinted") or "resolved paths (difaug plan version 1)"),
                ),
                limit=int(d.get("limit") or 0),
                rows=int(d["rows"]),
                shard_size=int(d["shard_size"]),
                shards=tuple(
                    ShardRange(int(s["index"]), int(s["rows"][0]), int(s["rows"][1])) for s in d["shards"]
                ),
                version=int(d["version"]),
                created_by=str(d.get("created_by") or ""),
                created=str(d.get("created") or ""),
                command=str(d.get("command") or ""),
                cwd=str(d.get("cwd") or ""),
                plan_hash=str(d["plan_hash"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RunDirError(
                f"{source} is not a difaug plan ({_what(e)}); rerun `difaug generate` with --overwrite "
                "to start this run over (only difaug's own files are removed)"
            ) from e
        if [s.index for s in plan.shards] != list(range(len(plan.shards))):
            raise RunDirError(f"{source}: shard indices are not 0..N-1; rerun with --overwrite")
        damage = plan.damage()
        if damage:
            raise RunDirError(
                f"{source} was edited or damaged ({damage}); restore it, or rerun `difaug generate` with "
                "--overwrite to start this run over (only difaug's own files are removed)"
            )
        return plan

    def damage(self) -> str:
        """Why the plan's contents do not match themselves ("" when they do): its own hash, the
        config's fingerprint, the row count and the shard list are all derived from the rest, so a
        hand edit of any one of them (a row range, `num_aux`) shows here before any work."""
        if self.plan_hash != self.compute_hash():
            return f"plan_hash {self.plan_hash[:12]} is not the hash of its contents ({self.compute_hash()[:12]})"
        config_hash = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()
        if config_hash != self.config_fingerprint:
            return "its config does not match its config_fingerprint"
        rows = min(self.manifest.rows, self.limit) if self.limit else self.manifest.rows
        if self.rows != rows or self.limit < 0:
            return f"rows {self.rows} do not follow from the manifest's {self.manifest.rows} and limit {self.limit}"
        if self.shard_size < 1 or list(self.shards) != cut(self.rows, self.shard_size):
            return f"its shard list is not {self.rows} rows cut in shards of {self.shard_size}"
        return ""


def _what(e: BaseException) -> str:
    return f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class ShardFile:
    """What a marker says the shard file is: verified against the file before it is trusted."""

    bytes: int
    rows: int
    sha256: str


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ShardStats:
    """A shard's marker. `done + failed == rows`, `images == file.rows`."""

    shard: int
    rows: tuple[int, int]  # [start, stop) of the manifest
    plan_hash: str
    done: int  # rows with all their images
    failed: int
    images: int
    file: ShardFile
    failures: tuple[Failure, ...] = ()
    # Seconds per stage (read, condition, generate, warmup, encode, write, score, …): stages only,
    # so they may be summed. The task's totals are apart: they overlap the stages.
    seconds: dict[str, float] = field(default_factory=dict)
    load_seconds: float | None = None  # building the models (0 when the process had them cached)
    wall_seconds: float | None = None  # the whole task, start to marker (incl. waiting for its turn)
    # CPU time of the worker process (all threads) during the task; a worker overlaps two shard
    # tasks, so the neighbouring shard's work in the same seconds is counted in both
    cpu_seconds: float | None = None
    fallbacks: dict[str, int] = field(default_factory=dict)
    # What went wrong but did not fail the shard: a torch.compile that fell back to eager, …
    compile_warnings: tuple[str, ...] = ()
    # Regeneration (`min_drift_iou`; all zero/empty when the job does not regenerate): kept images
    # that passed at attempt 0, 1, …; kept images that never passed (their best attempt is kept,
    # `drift_pass` false); images generated beyond one per kept image; kept images that took more
    # than one attempt; the seconds of those extra images (their share of `seconds.generate` and
    # `seconds.score`, not a stage of its own).
    passed_at: tuple[int, ...] = ()
    never_passed: int = 0
    extra_images: int = 0
    regenerated: int = 0
    regenerate_seconds: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    version: int = MARKER_VERSION

    @property
    def samples(self) -> int:
        return self.rows[1] - self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["rows"] = list(self.rows)
        d["file"] = asdict(self.file)
        d["failures"] = [f.to_dict() for f in self.failures]
        d["compile_warnings"] = list(self.compile_warnings)
        d["passed_at"] = list(self.passed_at)
        d["samples"] = self.samples
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "marker") -> ShardStats:
        """Strict: a marker that is not exactly what the worker writes raises RunDirError."""
        try:
            if int(d.get("version") or 1) < MARKER_VERSION:
                raise ValueError("written by an older difaug, without the shard file's checksum")
            name = shard_name(int(d["shard"]))
            stats = cls(
                shard=int(d["shard"]),
                rows=(int(d["rows"][0]), int(d["rows"][1])),
                plan_hash=str(d["plan_hash"]),
                done=int(d["done"]),
                failed=int(d["failed"]),
                images=int(d["images"]),
                file=ShardFile(int(d["file"]["bytes"]), int(d["file"]["rows"]), str(d["file"]["sha256"])),
                failures=tuple(Failure.from_dict(f, name) for f in d["failures"]),
                seconds=dict(d.get("seconds") or {}),
                load_seconds=_optional_float(d.get("load_seconds")),
                wall_seconds=_optional_float(d.get("wall_seconds")),
                cpu_seconds=_optional_float(d.get("cpu_seconds")),
                fallbacks=dict(d.get("fallbacks") or {}),
                compile_warnings=tuple(str(w) for w in d.get("compile_warnings") or ()),
                passed_at=tuple(int(n) for n in d.get("passed_at") or ()),
                never_passed=int(d.get("never_passed") or 0),
                extra_images=int(d.get("extra_images") or 0),
                regenerated=int(d.get("regenerated") or 0),
                regenerate_seconds=float(d.get("regenerate_seconds") or 0.0),
                worker=dict(d.get("worker") or {}),
                started=str(d.get("started") or ""),
                finished=str(d.get("finished") or ""),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise RunDirError(f"{source}: not a valid shard marker ({_what(e)})") from e
        problems = []
        if stats.done + stats.failed != stats.samples:
            problems.append(f"done {stats.done} + failed {stats.failed} != {stats.samples} rows")
        if len(stats.failures) != stats.failed:
            problems.append(f"{len(stats.failures)} failures listed but failed = {stats.failed}")
        if stats.images != stats.file.rows:
            problems.append(f"images {stats.images} != file rows {stats.file.rows}")
        if stats.passed_at and sum(stats.passed_at) + stats.never_passed != stats.images:
            problems.append(
                f"passed at each attempt {list(stats.passed_at)} + never passed {stats.never_passed} "
                f"!= images {stats.images}"
            )
        if problems:
            raise RunDirError(f"{source}: inconsistent marker ({'; '.join(problems)})")
        return stats


@dataclass
class Summary:
    """`OUT/summary.json`: one run's counts (manifest rows unless named images/shards) and failures.

    `done + failed + skipped + not_run == rows` always (`reconcile`)."""

    out: str
    rows: int
    shards: int
    done: int = 0  # rows that got all their images in this run
    failed: int = 0  # rows recorded as failed in this run (bad input, or a shard that kept failing)
    skipped: int = 0  # rows of shards finished (and verified) before this run
    skipped_failed: int = 0  # of those, rows that had failed back then
    not_run: int = 0  # rows of shards never attempted because the run stopped (`stopped` says why)
    images: int = 0  # images written in this run
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: list[int] = field(default_factory=list)
    redone_shards: dict[str, str] = field(default_factory=dict)  # invalid shard name → reason
    failures: list[Failure] = field(default_factory=list)  # this run's failures
    all_failures: list[Failure] = field(default_factory=list)  # this run's + verified earlier ones
    stopped: str = ""  # why the run stopped early ("" = it did not)
    seconds: float = 0.0
    dashboard: str = ""
    workers_replaced: int = 0  # SLURM worker jobs that ended (walltime, …) and were resubmitted

    @property
    def ok(self) -> bool:
        """Every planned row has its images (now or from an earlier run)."""
        return self.failed == 0 and self.skipped_failed == 0 and self.not_run == 0 and not self.stopped

    def reconcile(self) -> None:
        total = self.done + self.failed + self.skipped + self.not_run
        if total != self.rows:
            raise RuntimeError(
                f"summary does not add up: done {self.done} + failed {self.failed} + skipped "
                f"{self.skipped} + not run {self.not_run} = {total}, but the plan has {self.rows} rows"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["failures"] = [f.to_dict() for f in self.failures]
        d["all_failures"] = [f.to_dict() for f in self.all_failures]
        d["ok"] = self.ok
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "the summary") -> Summary:
        try:
            names = {f.name for f in fields(cls)}
            kw = {"out": str(source), "rows": 0, "shards": 0} | {k: v for k, v in d.items() if k in names}
            kw["failures"] = [Failure.from_dict(f) for f in d.get("failures") or ()]
            kw["all_failures"] = [Failure.from_dict(f) for f in d.get("all_failures") or ()]
            return cls(**kw)
        except (TypeError, AttributeError) as e:
            raise RunDirError(f"{source}: not a difaug summary ({_what(e)})") from e
