"""`export_run`: a run's auxiliary images as one file each, in a layout (`layouts.LAYOUTS`).

`with_conditions` also writes each support's ControlNet condition image under DifFSS's name,
`{name}_{class}_control.jpg` beside the aux images (`{sample_id}_control.png` for `folder`).
`min_drift_iou` keeps only aux images whose `drift_iou` is at least that; the kept ones are
numbered k = 0, 1, … without gaps, because BAM reads k = 0..aux_shot-1 and falls back at the
first gap.

Every image is decoded before it is written: one that does not decode is skipped and reported
(never a half-written or unreadable file). Names built from manifest values go through
`difaug.core.names`: nothing is written outside DIR. Every file is written to a temp name and
renamed; a file whose bytes are already right is left alone, so re-exporting is cheap and changes
nothing. JPEG/PNG images already stored in the target format are copied byte for byte; others are
re-encoded (JPEG at `quality`, 4:4:4).

One export at a time per DIR: `export_run` holds DIR's `.difaug.lock` (`FolderLock`, owner host and
pid recorded, a dead owner's lock taken over) from its report read to its report write, and a
second export into DIR waits for it (`on_wait` is told whom it waits for), so two runs exported
into one folder at once both keep their entries (`folder_report`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difaug.adapters.export import folder_report
from difaug.adapters.export.layouts import FORMATS, Layout, Support, get_layout
from difaug.adapters.export.result import ExportError, ExportResult, SkippedRow, SupportCoverage
from difaug.adapters.index import DriftScoreError, drift_filter
from difaug.adapters.run import Failure, RunView, open_run
from difaug.core import fsio, imageio
from difaug.core.folderlock import FolderLock, LockOwner, wait_message
from difaug.core.names import is_safe_component, safe_join
from difaug.run import layout as run_layout
from difaug.run import shards

EXPORT_COMMAND = "difaug export"  # the holder named in DIR's lock
CONDITION_SUFFIX = "control"  # DifFSS: f"{name}_{fg_cls}_control.jpg"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Target:
    shard: int
    group: int
    in_group: int
    sample_id: str
    aux_index: int  # -1 for a condition image
    path: Path
    name: str  # `path` relative to the export folder, POSIX: the key of the report's `paths`
    column: str = "aux_image"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    layout: str = "diffss-bam",
    *,
    image_format: str | None = None,
    quality: int = 95,
    workers: int = 2,
    write_report: bool = True,
    with_conditions: bool = False,
    min_drift_iou: float | None = None,
    progress: Callable[[int], None] | None = None,
    on_wait: Callable[[LockOwner | None], None] | None = None,
    force_unlock: bool = False,
) -> ExportResult:
    """Write one file per auxiliary image of `run_dir` into `out` in `layout`; report coverage.

    `image_format`: jpg or png (default jpg for diffss-bam and fss, as DifFSS saved; png for
    folder). `with_conditions`: also the condition images, under DifFSS's `_control` names.
    `min_drift_iou`: keep only aux images with `drift_iou >= min_drift_iou` (refused, naming
    `difaug score`, when the run has no scores). `progress(n)` is called with the number of files
    handled after each row group. The report in `out` merges with those of earlier exports there,
    and files of this run's earlier export there that this one does not write are removed
    (`folder_report`; `write_report=False` records nothing and removes nothing).

    Another export into `out` in progress is waited for (`on_wait(owner)` is called first; by
    default it is logged); a lock left by another host is refused unless `force_unlock`."""
    chosen = get_layout(layout)
    fmt = _image_format(chosen, image_format, quality)
    out = Path(out)
    refuse_out_in_run(out)
    selection = (chosen, fmt, min_drift_iou, with_conditions)
    view, targets, result = _read_and_name(run_dir, out, selection)
    wait = on_wait or _log_wait(out)  # the CLI prints the take-over note from the result: once
    lock = FolderLock(out, command=EXPORT_COMMAND, force=force_unlock, on_wait=wait, log_takeover=False)
    with lock:  # creates `out`; from the report's read to its write, no other export interferes
        if lock.waited:  # the run may have changed while we waited: export what it holds now
            view, targets, result = _read_and_name(run_dir, out, selection)
        if lock.took_over is not None:
            result.lock_taken_over = lock.took_over_note
        report = out / folder_report.REPORT_FILE
        runs = folder_report.read_report(report)
        if not chosen.names_by_run:
            folder_report.refuse_clashes(out, runs, result.run, [t.name for t in targets])
        if not write_report:
            runs = {}
        recorded = (
            folder_report.pending_record(runs, result, ((t.name, t.path) for t in targets))
            if write_report
            else {}
        )
        if write_report and recorded != folder_report.run_paths(runs.get(result.run)):
            # Before the first file: an interrupted export leaves every file it may create recorded.
            pending = {**(runs.get(result.run) or {}), "paths": recorded, "unfinished_export": True}
            folder_report.save_report(report, {**runs, result.run: pending}, out)
        done_by_sample = _write_all(view, targets, fmt, quality, workers, result, progress)
        _coverage(view, done_by_sample, result)
        if write_report:
            folder_report.remove_stale(out, recorded, runs, result)
            result.folder_total = folder_report.merge_report(report, result)["total"]
    return result


def refuse_out_in_run(out: Path) -> None:
    """Refuse an export folder inside a run directory (RUN, RUN/shards, RUN/exp, …): its files
    would mix with the run's own, and its lock would be the run's."""
    resolved = out.expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if run_layout.plan_path(folder).is_file():
            raise ExportError(
                f"--out {out} is inside the run directory {folder} (it holds {run_layout.PLAN_FILE}); "
                "export into a folder outside every run directory"
            )


def _read_and_name(
    run_dir: str | Path, out: Path, selection: tuple[Layout, str, float | None, bool]
) -> tuple[RunView, list[_Target], ExportResult]:
    """The run as it is now and every file name its export writes (a layout that cannot describe
    the run refused), before anything is written."""
    chosen, fmt, min_drift_iou, with_conditions = selection
    view = open_run(run_dir)
    result = ExportResult(
        chosen.name, out, fmt, view.num_aux, str(Path(run_dir).resolve()), min_drift_iou, with_conditions
    )
    try:
        keep = drift_filter(view, min_drift_iou)
    except DriftScoreError as e:
        raise ExportError(str(e)) from None
    chosen.check(view)
    return view, _plan_targets(view, out, chosen, fmt, keep, with_conditions, result), result


def _image_format(chosen: Layout, image_format: str | None, quality: int) -> str:
    fmt = (image_format or chosen.default_format).lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise ExportError(f"unknown image format {image_format!r}; use jpg or png")
    if not 1 <= quality <= 100:
        raise ExportError(f"JPEG quality must be in 1..100, got {quality}")
    return fmt


def _log_wait(out: Path) -> Callable[[LockOwner | None], None]:
    def wait(owner: LockOwner | None) -> None:
        log.warning("%s", wait_message(out, owner))

    return wait


# --- naming ------------------------------------------------------------------------------------


def _plan_targets(
    view: RunView,
    out: Path,
    chosen: Layout,
    fmt: str,
    keep: list[bool],
    with_conditions: bool,
    result: ExportResult,
) -> list[_Target]:
    """Every file to write, named by the layout; names it cannot use are skipped into `result`."""
    cols = {n: view.keys.column(n).to_pylist() for n in view.keys.column_names}
    # Each support's kept rows in aux_index order: they become k = 0, 1, … without gaps.
    by_sample: dict[str, list[int]] = {}
    for i, sid in enumerate(cols["sample_id"]):
        by_sample.setdefault(sid, []).append(i)
    targets: list[_Target] = []
    owner: dict[Path, str] = {}
    base = out.resolve()

    def add(i: int, k: int | str, aux_index: int, column: str) -> None:
        sid = cols["sample_id"][i]
        support = Support(
            sid, cols["image"][i], str(cols["dataset"][i] or ""), cols["class_id"][i], cols["class_name"][i]
        )
        parts = chosen.relative_name(support, k, fmt)
        unsafe = [p for p in parts if not is_safe_component(p)] if chosen.exact_names else []
        if unsafe:
            reason = f"image path {support.image!r} gives the unsafe file name {unsafe[0]!r}"
            result.skipped.append(SkippedRow(sid, aux_index, reason))
            return
        path = safe_join(out, *parts)
        if path in owner:
            result.skipped.append(
                SkippedRow(sid, aux_index, f"same file name as sample {owner[path]}: {path.name}")
            )
            return
        owner[path] = sid
        name = path.relative_to(base).as_posix()
        shard, group, in_group = cols["_shard"][i], cols["_group"][i], cols["_in_group"][i]
        targets.append(_Target(shard, group, in_group, sid, aux_index, path, name, column))

    for sid, rows in by_sample.items():
        rows.sort(key=lambda i: cols["aux_index"][i])
        kept = [i for i in rows if keep[i]]
        if len(kept) < len(rows):
            result.filtered[sid] = len(rows) - len(kept)
        for k, i in enumerate(kept):
            add(i, k, cols["aux_index"][i], "aux_image")
        if with_conditions:
            add(rows[0], CONDITION_SUFFIX, -1, "condition_image")
    return targets


# --- writing -----------------------------------------------------------------------------------


def convert(data: bytes, fmt: str, quality: int = 95, decoded: Any = None) -> bytes:
    """Stored image bytes → bytes in `fmt`; already-right formats are returned as they are.
    `decoded`: the image already decoded from `data`, if the caller has it."""
    if fmt == "jpg" and data.startswith(_JPEG_MAGIC):
        return data
    if fmt == "png" and data.startswith(_PNG_MAGIC):
        return data
    image = decoded if decoded is not None else imageio.load_image(data)
    return imageio.encode(image, "jpeg" if fmt == "jpg" else "png", quality)


def _write_one(item: tuple[_Target, bytes], fmt: str, quality: int) -> tuple[bool, str] | str:
    """(written, digest of the file's bytes) — written False: already right; a string: why the
    stored image cannot be exported."""
    target, data = item
    try:
        # Decode even when the bytes are copied as they are: a file the trainer cannot read
        # would be worse than a missing one (BAM falls back on a missing file, crashes on a bad one).
        image = imageio.load_image(data)
        encoded = convert(data, fmt, quality, image)
    except (imageio.ImageReadError, OSError, ValueError) as e:
        return f"stored {target.column} does not decode: {e}"
    return fsio.write_if_changed(target.path, encoded), folder_report.file_digest(encoded)


def _write_all(
    view: RunView,
    targets: list[_Target],
    fmt: str,
    quality: int,
    workers: int,
    result: ExportResult,
    progress: Callable[[int], None] | None,
) -> Counter[str]:
    """Write every target, one row group of image bytes in memory at a time; aux files per sample."""
    by_shard: dict[int, dict[int, list[_Target]]] = {}
    for t in targets:
        by_shard.setdefault(t.shard, {}).setdefault(t.group, []).append(t)
    done: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard, groups in sorted(by_shard.items()):
            with shards.open_shard(view.shard_paths[shard]) as pf:
                for group, group_targets in sorted(groups.items()):
                    columns = sorted({t.column for t in group_targets})
                    table = pf.read_row_group(group, columns=columns)
                    items = [(t, table.column(t.column)[t.in_group].as_py()["bytes"]) for t in group_targets]
                    outcomes = pool.map(lambda item: _write_one(item, fmt, quality), items)
                    for (t, _), outcome in zip(items, outcomes, strict=True):
                        if isinstance(outcome, str):
                            result.skipped.append(SkippedRow(t.sample_id, t.aux_index, outcome))
                            continue
                        written, result.paths[t.name] = outcome
                        result.written += written
                        result.unchanged += not written
                        if t.column == "condition_image":
                            result.conditions += 1
                        else:
                            done[t.sample_id] += 1
                    if progress:
                        progress(len(items))
    return done


# --- coverage ----------------------------------------------------------------------------------


def _coverage(view: RunView, done: Counter[str], result: ExportResult) -> None:
    """Every support the run was asked for: complete, or what it lacks and why."""
    expected = view.num_aux
    sample_ids = view.keys.column("sample_id").to_pylist()
    info: dict[str, tuple[int | None, str, int | None]] = {}
    for sid, row, image, cls in zip(
        sample_ids,
        view.keys.column("row").to_pylist(),
        view.keys.column("image").to_pylist(),
        view.keys.column("class_id").to_pylist(),
        strict=True,
    ):
        info.setdefault(sid, (row, image, cls))
    in_shards = Counter(sample_ids)
    failures: dict[str, list[Failure]] = {}
    for f in view.failures:  # a failure without a sample_id (unreadable row) is keyed by its row
        failures.setdefault(f.sample_id or f"row {f.row}", []).append(f)
    skipped: dict[str, list[str]] = {}
    for s in result.skipped:
        skipped.setdefault(s.sample_id, []).append(f"{s.what} not exported: {s.reason}")

    for sid in sorted(set(info) | set(failures)):
        have = done.get(sid, 0)
        if expected and have >= expected:
            result.complete += 1
            continue
        reasons = [f"{f.stage}: {f.reason}" if f.stage else f.reason for f in failures.get(sid, [])]
        reasons += skipped.get(sid, [])
        n_filtered = result.filtered.get(sid, 0)
        if n_filtered:
            reasons.append(f"{n_filtered} of {expected} below --min-drift-iou {result.min_drift_iou}")
        if not reasons:
            reasons.append(f"only {in_shards.get(sid, 0)} of {expected} aux images in the shards")
        row, image, cls = info.get(sid, (None, "", None))
        if row is None:
            row = next((f.row for f in failures.get(sid, []) if f.row is not None), None)
        result.incomplete.append(
            SupportCoverage(sid, row, image, cls, have, expected, tuple(reasons), n_filtered)
        )
    _unfinished(view, result)


def _unfinished(view: RunView, result: ExportResult) -> None:
    unfinished = view.unfinished_shards()
    result.unfinished_shards = [{"name": s.name, "start": s.start, "stop": s.stop} for s in unfinished]
    # Rows of unfinished shards: those of a shard that failed as a whole are listed above with the
    # task's error; the rest were never attempted.
    failed_rows = {f.row for f in view.failures if f.shard in {s.name for s in unfinished}}
    result.not_generated = sum(s.num_rows for s in unfinished) - len(failed_rows)
    result.supports = result.complete + len(result.incomplete) + result.not_generated
    result.failures_by_reason = dict(sorted(view.failure_reasons().items()))
