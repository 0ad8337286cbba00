"""The plan: which manifest rows go into which shard, fixed before any model loads.

`OUT/difaug.json` (`difaug.run.records.Plan`) records the job config, the manifest reference and
fingerprint, and the shard list. Shards are ranges of manifest rows (`[start, stop)`, 1-based,
`shard_size` rows each, manifest order), so the plan stays a few kilobytes for any manifest and
every row, good or bad, belongs to exactly one shard. A rerun with the same plan skips the shards
that verify (`difaug.run.verify.verify_run`) and redoes the rest; a different plan is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from difaug import __version__
from difaug.core.config import Job, JobConfig
from difaug.inputs.manifest import Manifest
from difaug.run import layout
from difaug.run.records import ManifestRef, Plan, RunDirError, cut
from difaug.run.verify import RunCheck, verify_run

__all__ = [
    "PlanError",
    "build_plan",
    "differences",
    "manifest_fingerprint",
    "manifest_rows",
    "predated_settings",
    "prepare_run_dir",
]

log = logging.getLogger(__name__)


class PlanError(RunDirError):
    """The run directory holds a different job, or the plan cannot be made; the message says why."""


def manifest_rows(manifest: Manifest) -> int:
    """How many data rows the manifest file has: every row became a Sample or a problem."""
    rows = [s.row for s in manifest.samples] + [p.row for p in manifest.problems if p.row > 0]
    return max(rows, default=0)


def manifest_fingerprint(manifest: Manifest) -> str:
    """Content hash of the rows as written (`Manifest.fingerprint`) plus which rows could not be
    normalised."""
    bad_rows = sorted({p.row for p in manifest.problems})
    return hashlib.sha256(f"{manifest.fingerprint}|{bad_rows}".encode()).hexdigest()


def _manifest_folder(path: str) -> str:
    if "://" in path:
        return path.rsplit("/", 1)[0]
    return str(Path(path).resolve().parent)


def build_plan(job: Job, manifest: Manifest, *, command: str = "", cwd: str = "") -> Plan:
    total = manifest_rows(manifest)
    rows = min(total, job.limit) if job.limit else total
    return Plan(
        config=asdict(job.config),
        config_fingerprint=job.config.fingerprint(),
        manifest=ManifestRef(
            path=str(manifest.path),
            folder=_manifest_folder(str(manifest.path)),
            fingerprint=manifest_fingerprint(manifest),
            rows=total,
        ),
        limit=job.limit,
        rows=rows,
        shard_size=job.config.shard_size,
        shards=tuple(cut(rows, job.config.shard_size)),
        created_by=f"difaug {__version__}",
        command=command,
        cwd=cwd or (os.getcwd() if command else ""),
    )


def predated_settings(old: Plan, new: Plan) -> list[str]:
    """The settings `new` has and `old` lacks, at their defaults: a plan written by an earlier
    difaug, before they existed. A new setting's default keeps the earlier images byte for byte
    (a change that cannot bumps `records.PLAN_VERSION`), so they do not make it another job."""
    defaults = asdict(JobConfig())
    return sorted(k for k in set(new.config) - set(old.config) if new.config[k] == defaults.get(k, object()))


def _value(config: dict, key: str) -> str:
    return repr(config[key]) if key in config else "not in the plan"


def differences(old: Plan, new: Plan) -> list[str]:
    """Human-readable reasons why two plans are not the same job (`predated_settings` are not)."""
    out = []
    if old.version != new.version:
        out.append(f"plan version {old.version} → {new.version}")
    predated = set(predated_settings(old, new))
    changed = sorted(
        k
        for k in set(old.config) | set(new.config)
        if k not in predated and old.config.get(k) != new.config.get(k)
    )
    if changed:
        out.append(
            "config differs in "
            + ", ".join(f"{k} ({_value(old.config, k)} → {_value(new.config, k)})" for k in changed)
        )
    elif old.config_fingerprint != new.config_fingerprint and not predated:
        out.append("config fingerprint differs")
    om, nm = old.manifest, new.manifest
    if om.fingerprint != nm.fingerprint or om.rows != nm.rows:
        out.append(
            f"manifest differs: the plan has {om.path} ({om.rows} rows, fingerprint {om.fingerprint[:12]} "
            f"of its {om.fingerprinted}), now {nm.path} ({nm.rows} rows, fingerprint {nm.fingerprint[:12]})"
        )
    if old.limit != new.limit:
        out.append(f"limit {old.limit} → {new.limit}")
    # The rest of the hash (rows, shards), over the old plan's config: predated settings aside.
    same_config = replace(new, config=old.config, config_fingerprint=old.config_fingerprint, plan_hash="")
    if not out and old.plan_hash != same_config.plan_hash:
        out.append("shard list differs")
    return out


def prepare_run_dir(job: Job, plan: Plan) -> RunCheck:
    """Make `job.out` ready for `plan` (call it holding the run lock); returns every shard's verdict.

    Same plan → resume: verified shards are kept, invalid ones lose their marker (they are redone).
    Different plan → PlanError naming what differs, unless `job.overwrite`. The plan is written
    here, before any model loads."""
    out = Path(job.out)
    plan_file = layout.plan_path(out)
    if job.overwrite:
        n = layout.clear_run(out)
        if n:
            log.info("%s: --overwrite removed %d file(s) of the previous run", out, n)
    elif plan_file.is_file():
        try:
            old = layout.read_plan(out)
        except RunDirError as e:
            raise PlanError(str(e)) from e
        diffs = differences(old, plan)
        if diffs:
            raise PlanError(
                f"{out} holds a different job: {'; '.join(diffs)}. Use another --out, or --overwrite "
                "to delete its shards and start over."
            )
        predated = predated_settings(old, plan)
        if predated:
            log.info("%s: the plan predates %s; resumed with their defaults", out, ", ".join(predated))
        # Same job: keep `created` (and the old plan's config and hash, which its markers name);
        # record where the manifest is now (data and manifest may have moved together) and the
        # latest command, so `inspect` names one that works.
        plan = replace(
            old,
            manifest=replace(old.manifest, path=plan.manifest.path, folder=plan.manifest.folder),
            command=plan.command or old.command,
            cwd=plan.cwd if plan.command else old.cwd,
        )
        if plan != old:
            layout.write_plan(out, plan)
    elif layout.has_run_files(out):
        raise PlanError(
            f"{out} has shards but no {layout.PLAN_FILE}; use another --out, or --overwrite to start over"
        )
    layout.ensure_dir(out)
    layout.remove_temp_files(out)
    if not plan_file.is_file():
        plan = replace(plan, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        layout.write_plan(out, plan)
    layout.probe_writable(out)  # shards/ and stats/ writable: else one clear error before any work
    check = verify_run(out, plan)
    for c in check.invalid:  # redone by this run; no stale marker may outlive the new shard
        layout.marker_path(out, c.shard.index).unlink(missing_ok=True)
    return check
