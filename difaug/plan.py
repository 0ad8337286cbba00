"""The plan: which manifest rows go into which shard, fixed before any model loads.

`OUT/difaug.json` records the job config, the manifest's fingerprint and the shard list. Shards
are ranges of manifest rows (`[start, stop)`, 1-based, `shard_size` rows each, manifest order), so
the plan stays a few kilobytes for any manifest and every row, good or bad, belongs to exactly one
shard. A rerun with the same plan skips shards whose marker exists; a different plan is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from difaug import __version__, shards
from difaug.config import Job
from difaug.manifest import Manifest

PLAN_VERSION = 1


class PlanError(ValueError):
    """The run directory holds a different job, or the plan cannot be made; the message says why."""


@dataclass(frozen=True)
class ShardRange:
    index: int
    start: int  # first manifest row, 1-based
    stop: int  # one past the last

    def __len__(self) -> int:
        return self.stop - self.start


def manifest_rows(manifest: Manifest) -> int:
    """How many data rows the manifest file has: every row became a Sample or a problem."""
    rows = [s.row for s in manifest.samples] + [p.row for p in manifest.problems if p.row > 0]
    return max(rows, default=0)


def manifest_fingerprint(manifest: Manifest) -> str:
    """Content hash of the normalised rows plus which rows could not be normalised."""
    bad_rows = sorted({p.row for p in manifest.problems})
    return hashlib.sha256(f"{manifest.fingerprint}|{bad_rows}".encode()).hexdigest()


def cut(rows: int, shard_size: int) -> list[ShardRange]:
    return [
        ShardRange(i, start, min(start + shard_size, rows + 1))
        for i, start in enumerate(range(1, rows + 1, shard_size))
    ]


def build_plan(job: Job, manifest: Manifest) -> dict[str, Any]:
    total = manifest_rows(manifest)
    rows = min(total, job.limit) if job.limit else total
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "created_by": f"difaug {__version__}",
        "config": asdict(job.config),
        "config_fingerprint": job.config.fingerprint(),
        "manifest": {
            "path": str(manifest.path),
            "fingerprint": manifest_fingerprint(manifest),
            "rows": total,
        },
        "limit": job.limit,
        "rows": rows,
        "shard_size": job.config.shard_size,
        "num_aux": job.config.num_aux,
        "shards": [{"index": r.index, "rows": [r.start, r.stop]} for r in cut(rows, job.config.shard_size)],
    }
    plan["plan_hash"] = plan_hash(plan)
    return plan


def plan_hash(plan: dict[str, Any]) -> str:
    """What must match for a resume: everything but the paths and provenance of the run itself."""
    keep = {k: plan[k] for k in ("version", "config_fingerprint", "limit", "rows", "shard_size", "shards")}
    keep["manifest"] = {k: plan["manifest"][k] for k in ("fingerprint", "rows")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def shard_ranges(plan: dict[str, Any]) -> list[ShardRange]:
    return [ShardRange(s["index"], s["rows"][0], s["rows"][1]) for s in plan["shards"]]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons why two plans are not the same job."""
    out = []
    if old.get("version") != new["version"]:
        out.append(f"plan version {old.get('version')} → {new['version']}")
    old_cfg, new_cfg = old.get("config", {}), new["config"]
    changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    if changed:
        out.append(
            "config differs in "
            + ", ".join(f"{k} ({old_cfg.get(k)!r} → {new_cfg.get(k)!r})" for k in changed)
        )
    elif old.get("config_fingerprint") != new["config_fingerprint"]:
        out.append("config fingerprint differs")
    om, nm = old.get("manifest", {}), new["manifest"]
    if om.get("fingerprint") != nm["fingerprint"] or om.get("rows") != nm["rows"]:
        out.append(
            f"manifest differs: the plan has {om.get('path')} ({om.get('rows')} rows, fingerprint "
            f"{str(om.get('fingerprint'))[:12]}), now {nm['path']} ({nm['rows']} rows, fingerprint "
            f"{nm['fingerprint'][:12]})"
        )
    if old.get("limit") != new["limit"]:
        out.append(f"limit {old.get('limit')} → {new['limit']}")
    if not out and old.get("plan_hash") != new["plan_hash"]:
        out.append("shard list differs")
    return out


def clear_run(out: Path) -> None:
    """Delete what a run wrote (plan, shards, markers, summary); other files stay."""
    for sub in (shards.SHARDS_DIR, shards.STATS_DIR):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in (shards.PLAN_FILE, SUMMARY_FILE):
        (out / name).unlink(missing_ok=True)


SUMMARY_FILE = "summary.json"


def prepare_run_dir(job: Job, plan: dict[str, Any]) -> set[int]:
    """Make `job.out` ready for `plan`; returns the indices of shards already finished.

    Same plan → resume. Different plan → PlanError naming what differs, unless `job.overwrite`.
    The plan is written here, before any model loads."""
    out = Path(job.out)
    plan_file = out / shards.PLAN_FILE
    if job.overwrite:
        clear_run(out)
    elif plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"{plan_file} is unreadable ({e}); use --overwrite to start over") from e
        diffs = differences(old, plan)
        if diffs:
            raise PlanError(
                f"{out} holds a different job: {'; '.join(diffs)}. Use another --out, or --overwrite "
                "to delete its shards and start over."
            )
    elif any((out / sub).is_dir() and any((out / sub).iterdir()) for sub in ("shards", "stats")):
        raise PlanError(
            f"{out} has shards but no {shards.PLAN_FILE}; use another --out, or --overwrite to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    shards.remove_temp_files(out)
    if not plan_file.is_file():
        record = dict(plan, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        shards.write_json(plan_file, record)
    return finished_shards(out, plan)


def finished_shards(out: Path, plan: dict[str, Any]) -> set[int]:
    """Shards with a marker of this plan and their Parquet file; stale markers are removed."""
    done = set()
    for r in shard_ranges(plan):
        marker = shards.stats_path(out, r.index)
        if not marker.is_file():
            continue
        try:
            stats = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stats = {}
        if stats.get("plan_hash") == plan["plan_hash"] and shards.shard_path(out, r.index).is_file():
            done.add(r.index)
        else:
            marker.unlink(missing_ok=True)
    return done
