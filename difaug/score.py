"""`difaug score RUN`: drift scores for the finished shards of a run made without them.

Shard by shard, like generate: a shard whose `drift_segments` column is already filled for every
row is skipped; any other is read, its aux images segmented with DiffSeg (`difaug.diffseg`) against
each row's support mask, and rewritten atomically with `drift_iou` and `drift_segments` filled
(`shards.write_shard`); then its stats marker records `"scored"`. A kill between the two leaves a
filled shard, which the next run recognises and only marks. Rerunning changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from difaug import imageio, shards
from difaug.config import JobConfig, RuntimeConfig

# Scores a list of aux images against their masks: (images, masks, class_ids) -> [DriftScore].
Scorer = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[int]], list]
ScoreHook = Callable[[int, str], None]  # (shard index, "scored" | "skipped")


@dataclass
class ScoreSummary:
    scored_shards: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    rows: int = 0  # rows scored in this call
    unscorable: list[dict] = field(default_factory=list)  # {shard, key, reason}: left null
    seconds: float = 0.0


def run_config(run_dir: str | Path) -> JobConfig:
    """The run's JobConfig from its plan (keys this version does not know are ignored)."""
    cfg = shards.load_plan(run_dir).get("config") or {}
    known = {f.name for f in fields(JobConfig)}
    return JobConfig(**{k: v for k, v in cfg.items() if k in known})


def load_scorer(cfg: JobConfig, runtime: RuntimeConfig) -> Scorer:
    """DiffSeg on the run's own base model (loaded as generate loads it)."""
    from difaug.diffseg import DiffSeg
    from difaug.generate import AuxGenerator

    generator = AuxGenerator.from_config(cfg, runtime)
    return DiffSeg(generator.pipe).score


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
    """Fill the score columns of every finished shard that lacks them (see the module docstring)."""
    t0 = time.perf_counter()
    summary = ScoreSummary()
    shards.load_plan(run_dir)  # a clear error when this is not a run directory
    for path in shards.iter_shard_paths(run_dir):
        index = int(path.stem)
        marker_path = shards.stats_path(run_dir, index)
        marker = shards.load_json(marker_path)
        table = shards.read_shard(path)
        if is_scored(table):
            if "scored" not in marker:  # filled during generation, or killed before the marker
                marker["scored"] = _record(table.num_rows, "generate")
                shards.write_json(marker_path, marker)
            summary.skipped_shards.append(index)
            if progress:
                progress(index, "skipped")
            continue
        table, problems = score_table(table, scorer, batch_size, index)
        shards.write_shard(path, table)  # atomic; then the marker says so
        marker["scored"] = _record(table.num_rows - len(problems), "score")
        shards.write_json(marker_path, marker)
        summary.scored_shards.append(index)
        summary.rows += table.num_rows - len(problems)
        summary.unscorable += problems
        if progress:
            progress(index, "scored")
    summary.seconds = time.perf_counter() - t0
    return summary


def _record(rows: int, by: str) -> dict[str, Any]:
    return {
        "method": "diffseg",
        "by": by,
        "rows": rows,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
