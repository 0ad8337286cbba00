"""`difaug score RUN`: drift scores for the finished shards of a run made without them.

Shard by shard, like generate, under the run's lock: each shard verified by its marker
(`verify.verify_run`) whose `drift_segments` column is already filled for every row is skipped;
any other is read, its aux images segmented with DiffSeg (`difaug.diffusion.diffseg`) against each row's
support mask, rewritten atomically with `drift_iou` and `drift_segments` filled
(`shards.write_shard`), and its marker rewritten with the new file's checksum and the scoring
time in `seconds.score` (`verify.rewrite_marker`). Rerunning changes nothing. A kill between the
shard's rename and its marker's leaves a shard its marker no longer vouches for: it is reported,
and the next `difaug generate` redoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from difaug.core import imageio
from difaug.core.config import JobConfig, RuntimeConfig
from difaug.core.folderlock import FolderLock
from difaug.run import layout, shards, verify

# Scores a list of aux images against their masks: (images, masks, class_ids) -> [DriftScore].
Scorer = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[int]], list]
ScoreHook = Callable[[int, str], None]  # (shard index, "scored" | "skipped")


@dataclass
class ScoreSummary:
    scored_shards: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    rows: int = 0  # rows scored in this call
    unscorable: list[dict] = field(default_factory=list)  # {shard, key, reason}: left null
    # {shard, reason}: shards whose marker does not vouch for their file; `difaug generate` redoes them
    unverified: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def run_config(run_dir: str | Path) -> JobConfig:
    """The run's JobConfig from its plan (keys this version does not know are ignored)."""
    cfg = layout.read_plan(run_dir).config
    known = {f.name for f in fields(JobConfig)}
    return JobConfig(**{k: v for k, v in cfg.items() if k in known})


def load_scorer(cfg: JobConfig, runtime: RuntimeConfig) -> Scorer:
    """DiffSeg on the run's own base model, loaded without its ControlNet (`diffseg.load`): the
    scores generation would have written."""
    from difaug.diffusion import diffseg

    return diffseg.load(cfg, runtime).drift_scores


def is_scored(table: pa.Table) -> bool:
    return table.num_rows == 0 or table.column("drift_segments").null_count == 0


def score_table(
    table: pa.Table, scorer: Scorer, batch_size: int, shard: int = 0
) -> tuple[pa.Table, list[dict]]:
    """The shard table with both score columns filled; rows whose mask cannot be read stay null."""
    iou: list[float | None] = [None] * table.num_rows
    segments: list[int | None] = [None] * table.num_rows
    problems: list[dict] = []
    masks: dict[str, np.ndarray | None] = {}
    cols = table.select(["key", "mask", "class_id", "aux_image"]).to_pylist()
    todo = []
    for i, row in enumerate(cols):
        if row["mask"] not in masks:
            try:
                masks[row["mask"]] = imageio.load_mask(row["mask"])
            except (ValueError, OSError) as e:
                masks[row["mask"]] = None
                problems.append({"shard": shard, "key": row["key"], "reason": f"mask {row['mask']}: {e}"})
        if masks[row["mask"]] is not None:
            todo.append(i)
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        images = [imageio.load_image(cols[i]["aux_image"]["bytes"]) for i in part]
        part_masks = [masks[cols[i]["mask"]] for i in part]
        for i, img, mask in zip(part, images, part_masks, strict=True):
            if mask.shape != img.shape[:2]:
                raise ValueError(f"shard {shard} row {cols[i]['key']}: aux image and mask differ in size")
        for i, s in zip(part, scorer(images, part_masks, [cols[i]["class_id"] for i in part]), strict=True):
            iou[i], segments[i] = s.iou, s.segments
    table = table.set_column(
        table.schema.get_field_index("drift_iou"), "drift_iou", pa.array(iou, pa.float64())
    ).set_column(
        table.schema.get_field_index("drift_segments"), "drift_segments", pa.array(segments, pa.int32())
    )
    return table, problems


def score_run(
    run_dir: str | Path,
    scorer: Scorer,
    *,
    batch_size: int = 8,
    progress: ScoreHook | None = None,
) -> ScoreSummary:
    """Fill the score columns of every verified shard that lacks them (see the module docstring).

    Holds the run's lock (`FolderLock`): never while `difaug generate` writes into the run."""
    t0 = time.perf_counter()
    summary = ScoreSummary()
    with FolderLock(run_dir, command="difaug score", busy_hint="Wait for it to finish."):
        for check in verify.verify_run(run_dir).checks:
            index = check.shard.index
            if not check.ok or check.stats is None:
                if check.status == "invalid":  # missing shards are simply not finished yet
                    summary.unverified.append({"shard": index, "reason": check.reason})
                continue
            path = layout.shard_path(run_dir, index)
            # The one small column decides; the images are read only for a shard to score.
            if is_scored(shards.read_shard(path, columns=["drift_segments"])):
                summary.skipped_shards.append(index)
                if progress:
                    progress(index, "skipped")
                continue
            table = shards.read_shard(path)
            ts = time.perf_counter()
            table, problems = score_table(table, scorer, batch_size, index)
            shards.write_shard(path, table)  # atomic; then the marker vouches for the new file
            seconds = dict(check.stats.seconds) | {"score": round(time.perf_counter() - ts, 4)}
            verify.rewrite_marker(run_dir, check.stats, seconds=seconds)
            summary.scored_shards.append(index)
            summary.rows += table.num_rows - len(problems)
            summary.unscorable += problems
            if progress:
                progress(index, "scored")
    summary.seconds = time.perf_counter() - t0
    return summary
