"""What `difaug inspect` reports about a run, as typed records: it reads, it prints nothing.

`summarise(run_dir)` reads the plan, the verified shards' markers (`ShardStats`) and key columns
(no image bytes) into a `RunReport`: counts, failures by reason and stage, seconds by stage, the
tasks' totals, disk use and the job config. `score_stats(run_dir)` reads the shards' drift-score
columns into a `ScoreStats`. Only verified shards count (`difaug.adapters.run.open_run`); the others
are reported as invalid with the reason and the command that redoes them. Drawing and printing
these records is `difaug.report.sheets`, `difaug.report.html` and `difaug.report.text`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from difaug.adapters.run import Failure, RunView, open_run
from difaug.core.config import DEFAULT_CONTROLNETS, JobConfig
from difaug.run import shards
from difaug.run.records import ShardStats, shard_name

if TYPE_CHECKING:
    from difaug.adapters.index import AuxIndex

# The provenance columns (`shards.PROVENANCE_COLUMNS`) that say *which* models and hardware made
# the images: listed with the config. The numeric ones (steps, guidance, …) repeat the config.
MODEL_PROVENANCE_COLUMNS = tuple(
    c
    for c in shards.PROVENANCE_COLUMNS
    if c in ("base_model", "controlnet_model", "scheduler", "dtype", "device")
)
DEVICE_STAGE = "generate"  # the stage that holds the GPU (conditions may too; listed separately)
# A task's totals (`ShardStats` fields): they overlap the stages, never summed with them.
TASK_TOTALS = {"load": "load_seconds", "wall": "wall_seconds", "cpu": "cpu_seconds"}
TASK_TOTAL_LABELS = {
    "load": "model loading",
    "wall": "task wall time",
    "cpu": "worker CPU (all threads; shared by overlapping shards)",
}
SCORE_BINS = 10  # histogram bins over [0, 1]
SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class ShardTiming:
    shard: str
    images: int
    seconds: float | None  # the task's own wall time (marker `wall_seconds`)
    device_seconds: float | None  # seconds.generate
    images_per_s: float | None


@dataclass(frozen=True)
class Regeneration:
    """What regeneration (`min_drift_iou`, `max_attempts`) did, summed over the shards' markers."""

    threshold: float  # min_drift_iou
    max_attempts: int
    images: int  # kept images in the shards that regenerate
    passed_at: list[int]  # kept images that passed at attempt 0, 1, … (index = attempt)
    never_passed: int  # kept with their best attempt, `drift_pass` false
    extra_images: int  # generated beyond one per kept image
    regenerated: int  # kept images that took more than one attempt
    seconds: float  # the extra images' share of the generate and score seconds

    @property
    def extra_per_kept(self) -> float:
        return self.extra_images / self.images if self.images else 0.0

    def passed_share(self) -> list[float]:
        """The share of kept images that passed at each attempt."""
        return [n / self.images if self.images else 0.0 for n in self.passed_at]


def regeneration(stats: Sequence[ShardStats], config: Mapping[str, Any]) -> Regeneration | None:
    """The regeneration totals of the shards that recorded them (None when none did)."""
    counted = [s for s in stats if s.passed_at]
    if not counted:
        return None
    width = max(len(s.passed_at) for s in counted)
    return Regeneration(
        threshold=float(config.get("min_drift_iou") or 0.0),
        max_attempts=int(config.get("max_attempts") or width),
        images=sum(s.images for s in counted),
        passed_at=[sum(s.passed_at[a] for s in counted if a < len(s.passed_at)) for a in range(width)],
        never_passed=sum(s.never_passed for s in counted),
        extra_images=sum(s.extra_images for s in counted),
        regenerated=sum(s.regenerated for s in counted),
        seconds=round(sum(s.regenerate_seconds for s in counted), 4),
    )


def device_seconds_label(devices: Sequence[str]) -> str:
    """What to call the generate stage's seconds: GPU-seconds only when every shard ran on CUDA."""
    if devices and all(d.startswith("cuda") for d in devices):
        return "GPU-seconds"
    return f"device-seconds ({', '.join(devices)})" if devices else "device-seconds"


@dataclass
class RunReport:
    run_dir: str
    manifest_rows: int  # rows the plan covers
    rows: int  # aux images in finished shards (one shard row each)
    samples: int  # samples with images
    classes: dict[str, int]  # class_name → samples with images
    num_aux: int
    shards_done: int
    shards_planned: int
    unfinished_shards: list[str]
    failures: list[Failure]
    failures_by_reason: dict[str, int]
    failures_by_stage: dict[str, int]
    wall_seconds: float | None  # first shard start → last shard finish
    images_per_s: float | None  # rows / wall_seconds
    device_seconds: float  # sum of seconds.generate: the GPU-seconds the images cost
    stage_seconds: dict[str, float]  # every stage's seconds summed over shards (stages only)
    # The tasks' totals summed over shards, apart from the stages they overlap: "load" (models),
    # "wall" (task start → marker), "cpu" (worker process CPU during the tasks: two overlapping
    # tasks of one worker both count the seconds they share)
    task_seconds: dict[str, float]
    per_shard: list[ShardTiming]
    disk_bytes: int  # everything in the run dir
    shard_bytes: int  # the Parquet shards alone
    config: dict[str, Any]
    provenance: dict[str, list[str]] = field(default_factory=dict)  # distinct values in the shards
    # class name → samples whose seg condition used the fallback colour (no ADE20K mapping)
    condition_fallbacks: dict[str, int] = field(default_factory=dict)
    # shard name → why its marker or file does not verify (not counted anywhere above)
    invalid_shards: dict[str, str] = field(default_factory=dict)
    fix: str = ""  # the command that redoes invalid and unfinished shards
    regeneration: Regeneration | None = None  # None: no finished shard regenerates

    @property
    def device_label(self) -> str:
        """ "GPU-seconds" on CUDA, else "device-seconds (cpu)": the devices the shards name."""
        return device_seconds_label(self.provenance.get("device", []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreStats:
    """The distribution of `drift_iou` over a run's finished shards."""

    rows: int  # aux images in finished shards
    scored: int  # rows with a score
    mean: float | None
    quantiles: dict[str, float]  # "p5" … "p95"
    bins: list[int]  # counts of SCORE_BINS equal bins over [0, 1]
    mean_segments: float | None
    lowest: list[tuple[str, float]]  # (key, drift_iou), lowest first
    # key → (kept attempt, attempts generated) of the lowest rows, when the run regenerates
    lowest_attempts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LowImage:
    """One of `ScoreStats.lowest`: its key (`sample_id/k`), the sample, the score and the aux
    image (None when the sample's shard holds fewer than k + 1 images)."""

    key: str
    sample_id: str
    drift_iou: float
    image: np.ndarray | None


def lowest_images(stats: ScoreStats, index: AuxIndex) -> list[LowImage]:
    """The lowest-scoring aux images of `stats`, read through `index`: what the lowest sheet shows
    and `difaug inspect --explain` segments again."""
    out = []
    for key, iou in stats.lowest:
        sid, _, k = key.rpartition("/")
        aux = index.aux_images(sid)
        out.append(LowImage(key, sid, iou, aux[int(k)] if int(k) < len(aux) else None))
    return out


# --- the job config ----------------------------------------------------------------------------


def config_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's job config as the report shows it: every `JobConfig` field, since every one of
    them decides the images (a field added to JobConfig is shown without a change here)."""
    out = {f.name: config[f.name] for f in fields(JobConfig) if f.name in config}
    # "" means the default ControlNet for the condition, unless a model bundle supplies one.
    condition = config.get("condition")
    if not out.get("controlnet") and not config.get("model") and condition in DEFAULT_CONTROLNETS:
        out["controlnet"] = DEFAULT_CONTROLNETS[condition]
    return out


def _provenance(view: RunView) -> dict[str, list[str]]:
    values: dict[str, set[str]] = {c: set() for c in MODEL_PROVENANCE_COLUMNS}
    for path in view.shard_paths:
        table = shards.read_shard(path, MODEL_PROVENANCE_COLUMNS)  # dictionary-encoded: tiny
        for c in MODEL_PROVENANCE_COLUMNS:
            values[c].update(str(v) for v in table.column(c).unique().to_pylist())
    return {c: sorted(v) for c, v in values.items() if v}


# --- timings -----------------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:  # a temp file renamed away meanwhile
                continue
    return total


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def wall_seconds(stats: Sequence[ShardStats]) -> float | None:
    """First shard start → last shard finish (None when the markers carry no times)."""
    starts = [t for t in (_parse_time(s.started) for s in stats) if t is not None]
    ends = [t for t in (_parse_time(s.finished) for s in stats) if t is not None]
    if not starts or not ends:
        return None
    try:
        return max(0.0, (max(ends) - min(starts)).total_seconds())
    except TypeError:  # naive and aware timestamps mixed
        return None


def shard_timing(stats: ShardStats) -> ShardTiming:
    seconds = stats.wall_seconds
    return ShardTiming(
        shard_name(stats.shard),
        stats.images,
        seconds,
        stats.seconds.get(DEVICE_STAGE),
        stats.images / seconds if seconds else None,
    )


def stage_seconds(stats: Iterable[ShardStats]) -> dict[str, float]:
    """Every stage's seconds summed over the shards, by stage name."""
    total: Counter[str] = Counter()
    for s in stats:
        for stage, value in s.seconds.items():
            total[stage] += float(value)
    return {k: round(v, 4) for k, v in sorted(total.items())}


def task_seconds(stats: Iterable[ShardStats]) -> dict[str, float]:
    """The tasks' totals (`TASK_TOTALS`) summed over the shards that recorded them."""
    total: Counter[str] = Counter()
    for s in stats:
        for name, field_name in TASK_TOTALS.items():
            value = getattr(s, field_name)
            if value is not None:
                total[name] += value
    return {k: round(total[k], 4) for k in TASK_TOTALS if k in total}


# --- the report --------------------------------------------------------------------------------


def _classes(view: RunView) -> dict[str, int]:
    per_class: dict[str, set[str]] = {}
    keys = view.keys
    for sid, name in zip(
        keys.column("sample_id").to_pylist(), keys.column("class_name").to_pylist(), strict=True
    ):
        per_class.setdefault(name, set()).add(sid)
    return {k: len(v) for k, v in sorted(per_class.items())}


def summarise(run_dir: str | Path) -> RunReport:
    """Counts, failures, timings, disk use and config of a run, from its plan/markers/key columns."""
    view = open_run(run_dir)
    stats, keys = view.stats, view.keys
    per_shard = [shard_timing(s) for s in stats]
    fallbacks: Counter[str] = Counter()
    for s in stats:
        fallbacks.update(s.fallbacks)
    wall = wall_seconds(stats)
    return RunReport(
        run_dir=str(view.run_dir),
        manifest_rows=view.plan.rows,
        rows=keys.num_rows,
        samples=len(set(keys.column("sample_id").to_pylist())),
        classes=_classes(view),
        num_aux=view.num_aux,
        shards_done=len(view.shard_paths),
        shards_planned=len(view.plan.shards),
        unfinished_shards=[s.name for s in view.unfinished_shards()],
        failures=view.failures,
        failures_by_reason=dict(view.failure_reasons().most_common()),
        failures_by_stage=dict(Counter(f.stage or "?" for f in view.failures).most_common()),
        wall_seconds=wall,
        images_per_s=(keys.num_rows / wall) if wall else None,
        device_seconds=sum(t.device_seconds or 0.0 for t in per_shard),
        stage_seconds=stage_seconds(stats),
        task_seconds=task_seconds(stats),
        per_shard=per_shard,
        disk_bytes=_dir_bytes(view.run_dir),
        shard_bytes=sum(p.stat().st_size for p in view.shard_paths),
        config=config_summary(view.plan.config),
        provenance=_provenance(view),
        condition_fallbacks=dict(sorted(fallbacks.items())),
        invalid_shards={c.shard.name: c.reason for c in view.invalid},
        fix=view.fix,
        regeneration=regeneration(stats, view.plan.config),
    )


# --- drift scores (difaug.diffusion.diffseg) ---------------------------------------------------


def score_stats(run_dir: str | Path, lowest: int = 8) -> ScoreStats:
    """Score numbers from the shards' score columns (no image bytes read)."""
    view = open_run(run_dir)
    keys: list[str] = []
    ious: list[float | None] = []
    segments: list[int | None] = []
    attempts: dict[str, tuple[int, int]] = {}
    for path in view.shard_paths:
        t = shards.read_shard(path, columns=["key", "drift_iou", "drift_segments"])
        keys += t.column("key").to_pylist()
        ious += t.column("drift_iou").to_pylist()
        segments += t.column("drift_segments").to_pylist()
        attempts.update(_attempts(path))
    scored = [(k, v) for k, v in zip(keys, ious, strict=True) if v is not None]
    lowest_rows = sorted(scored, key=lambda kv: (kv[1], kv[0]))[:lowest]
    values = np.array([v for _, v in scored], dtype=np.float64)
    segs = [s for s in segments if s is not None]
    return ScoreStats(
        rows=len(keys),
        scored=len(scored),
        mean=float(values.mean()) if len(values) else None,
        quantiles={f"p{round(q * 100)}": float(np.quantile(values, q)) for q in SCORE_QUANTILES}
        if len(values)
        else {},
        bins=np.histogram(values, bins=SCORE_BINS, range=(0.0, 1.0))[0].astype(int).tolist(),
        mean_segments=float(np.mean(segs)) if segs else None,
        lowest=lowest_rows,
        lowest_attempts={k: attempts[k] for k, _ in lowest_rows if k in attempts},
    )


def _attempts(path: Path) -> dict[str, tuple[int, int]]:
    """key → (attempt, attempts) of a regenerating shard; {} for a shard without the columns (a
    run without regeneration, or made before it existed)."""
    import pyarrow.parquet as pq

    if "attempts" not in pq.read_schema(path).names:
        return {}
    t = shards.read_shard(path, columns=["key", "attempt", "attempts"]).to_pylist()
    return {r["key"]: (r["attempt"], r["attempts"]) for r in t}
