"""The shard task: what one Dask task (or the in-process executor) does for one shard, on whichever
worker runs it.

`run_shard` takes one of the process's shard slots (`difaug.run.shard_process`), gets the job's
models (`difaug.run.model_cache`), runs the three stages (`difaug.run.stages`: read + decode +
condition, generate, encode), then writes the shard atomically and, last, its stats marker. A
stage's error fails the task, so Dask retries it and no marker records a half-done shard.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from difaug.core.config import Job
from difaug.inputs.manifest import Sample
from difaug.run import layout, shards, verify
from difaug.run.model_cache import (
    ConditionFactory,
    GeneratorFactory,
    LoadedModels,
    default_condition_factory,
    default_generator_factory,
)
from difaug.run.records import Failure, ShardRange, ShardStats
from difaug.run.shard_process import shard_process
from difaug.run.stages import Measured, ShardState, StageInputs, run_stages

ProgressHook = Callable[[int, int], None]  # (shard index, images generated so far in this attempt)

PROGRESS_TOPIC = "difaug-progress"


@dataclass(frozen=True)
class ShardSpec:
    """One shard's share of the plan: small, picklable, no images."""

    shard: ShardRange
    samples: tuple[Sample, ...]  # rows of the range to generate
    failures: tuple[Failure, ...]  # rows of the range that failed before the task (manifest/validate)
    out: str
    plan_hash: str


class ShardCancelled(RuntimeError):
    """The shard was abandoned through `run_shard(cancel=...)`; nothing of it was written."""


def run_shard(
    spec: ShardSpec,
    job: Job,
    generator_factory: GeneratorFactory | None = None,
    condition_factory: ConditionFactory | None = None,
    progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
) -> ShardStats:
    """Generate one shard, write it and its marker; return the marker.

    At most `MAX_SHARDS_IN_FLIGHT` shards per process, however many threads the worker has (a plain
    `dask worker`, a SLURM job with `cores: 8`), taking turns in the prepare and generate stages
    (`difaug.run.shard_process`). Setting `cancel` (the in-process executor, interrupted) makes the
    stages wind down and the task raise `ShardCancelled`."""
    started, t0 = _now(), time.perf_counter()
    process = shard_process()
    with process.shard() as turn:
        layout.probe_writable(spec.out)  # a read-only or full OUT fails now, not after the shard's work
        gen_f = generator_factory or default_generator_factory
        cond_f = condition_factory or default_condition_factory
        with process.models.use(job, gen_f, cond_f) as models:
            cpu0 = time.process_time()  # after loading: the shard's own host work
            state = ShardState(failures=list(spec.failures), cancel=cancel)
            drift_scorer = process.models.drift_scorer(models.generator, job.config)
            state.masks = {} if drift_scorer is not None else None
            threads = job.runtime.threads_per_worker
            with process.torch_threads.pinned(threads) as pinned:
                inputs = StageInputs(
                    spec.samples, job, models.generator, models.condition, drift_scorer,
                    _progress_reporter(spec.shard.index, progress), threads if pinned else 0,
                )  # fmt: skip
                measured = run_stages(inputs, state, turn)
            if state.error is not None:
                raise state.error
            if state.halted:
                raise ShardCancelled(f"shard {spec.shard.index}: cancelled before its end; nothing written")
            state.add_time("warmup", measured.warmup_seconds)
            return _finish(spec, job, state, _Clocks(started, t0, cpu0), models, measured)


@dataclass(frozen=True)
class _Clocks:
    started: str  # wall-clock time the task started (ISO)
    perf: float  # `time.perf_counter()` then
    cpu: float  # `time.process_time()` once the models were loaded


def _progress_reporter(index: int, hook: ProgressHook | None) -> Callable[[int], None]:
    """Per-batch progress: to the driver's hook in-process, else as a Dask worker event (looked up
    on the task's thread, where Dask knows its worker)."""
    if hook is not None:
        return lambda n: hook(index, n)
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda n: None
    return lambda n: worker.log_event(PROGRESS_TOPIC, {"shard": index, "images": n})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _finished_rows(spec: ShardSpec, num_aux: int, state: ShardState) -> tuple[list[dict], int]:
    """The shard's rows in order and the number of samples done; RuntimeError when a row went
    missing (a sample short of its images, or rows neither done nor failed)."""
    rows = sorted(
        (r for r in state.rows if r["sample_id"] not in state.failed_ids),
        key=lambda r: (r["row"], r["aux_index"]),
    )
    per_sample = Counter(r["sample_id"] for r in rows)
    short = [sid for sid, n in per_sample.items() if n != num_aux]
    if short:
        raise RuntimeError(
            f"shard {spec.shard.index}: samples {short[:5]} lack some of their {num_aux} images"
        )
    if len(per_sample) + len(state.failures) != spec.shard.num_rows:
        raise RuntimeError(
            f"shard {spec.shard.index}: {len(per_sample)} done + {len(state.failures)} failed != "
            f"{spec.shard.num_rows} rows [{spec.shard.start}, {spec.shard.stop}) — a row went missing"
        )
    return rows, len(per_sample)


def _regeneration(job: Job, rows: list[dict], state: ShardState) -> dict:
    """The marker's regeneration counts, from the rows written (a sample that failed after its
    images were made counts nowhere); none when the shard's rows do not regenerate."""
    if not rows or "attempts" not in rows[0]:
        return {}
    passed_at = [0] * job.config.max_attempts
    for r in rows:
        if r["drift_pass"] is not False:
            passed_at[r["attempt"]] += 1
    return {
        "passed_at": tuple(passed_at),
        "never_passed": sum(r["drift_pass"] is False for r in rows),
        "extra_images": sum(r["attempts"] - 1 for r in rows),
        "regenerated": sum(r["attempts"] > 1 for r in rows),
        "regenerate_seconds": round(state.regenerate_seconds, 4),
    }


def _finish(
    spec: ShardSpec, job: Job, state: ShardState, clocks: _Clocks, models: LoadedModels, measured: Measured
) -> ShardStats:
    """Write the shard, then its marker (last: the marker vouches for a finished file)."""
    rows, done = _finished_rows(spec, job.config.num_aux, state)
    failures = tuple(sorted(state.failures, key=lambda f: f.row or 0))
    tw = time.perf_counter()
    path = shards.write_shard(layout.shard_path(spec.out, spec.shard.index), rows)
    # Hashed as it is on disk (once; cached by size and mtime), so the marker vouches for the file.
    file = verify.file_record(path, len(rows))
    state.add_time("write", time.perf_counter() - tw)
    stats = ShardStats(
        shard=spec.shard.index,
        rows=(spec.shard.start, spec.shard.stop),
        plan_hash=spec.plan_hash,
        done=done,
        failed=len(failures),
        images=len(rows),
        file=file,
        failures=failures,
        seconds={k: round(v, 4) for k, v in sorted(state.stage_seconds.items())},
        load_seconds=round(models.load_seconds, 4),
        wall_seconds=round(time.perf_counter() - clocks.perf, 4),
        # CPU of the whole process during the task (all threads): with two shards in flight per
        # process, the neighbouring shard's work in the same seconds counts in both.
        cpu_seconds=round(time.process_time() - clocks.cpu, 4),
        fallbacks=dict(sorted(state.fallbacks.items())),
        compile_warnings=measured.compile_warnings,
        **_regeneration(job, rows, state),
        worker={"host": socket.gethostname(), "pid": os.getpid()},
        started=clocks.started,
        finished=_now(),
    )
    layout.write_marker(spec.out, stats)
    return stats
