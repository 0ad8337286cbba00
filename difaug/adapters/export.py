"""Export a run's auxiliary images as files in the layout an external FSS trainer reads.

Layouts:
- `diffss-bam`: where the DifFSS fork of BAM (`util/dataset.py`, `SemData`) looks for them:
  `aux_data_dir + mainshot_fn + f"_{class_chosen}_{k}.jpg"` (then `.png`), where `mainshot_fn` is
  the support image's file name minus its last 4 characters (`name[:-4]`, i.e. the stem for
  `.jpg`/`.png`), prefixed with the image's parent folder for COCO (`train2014/…`, `val2014/…`),
  `class_chosen` the support mask's class value (PASCAL 1..20, COCO 1..80) and k = 0..X-1.
  That loader silently falls back to the real support when a file is missing, so the export
  reports coverage per support: complete, or how many are missing and why.
- `fss`: `{class folder}/{idx}_1_{k}.jpg`, DifFSS's own FSS-1000 output (ControlNet4FSS
  `FSSpregenerate.py`: the image name `{class}/{idx}`, the binarised mask's class 1); the class
  folder is the support image's parent folder, as in the FSS-1000 tree.
- `folder`: `DIR/{class_name}/{sample_id}_{k}.png`, for general use.

`with_conditions` also writes each support's ControlNet condition image under DifFSS's name,
`{name}_{class}_control.jpg` beside the aux images (`{sample_id}_control.png` for `folder`).
`min_drift_iou` keeps only aux images whose `drift_iou` is at least that; the kept ones are
numbered k = 0, 1, … without gaps, because BAM reads k = 0..aux_shot-1 and falls back at the
first gap.

Every image is decoded before it is written: one that does not decode is skipped and reported
(never a half-written or unreadable file). Names built from manifest values go through
`safe_names`: nothing is written outside DIR. Every file is written to a temp name and renamed; a
file whose bytes are already right is left alone, so re-exporting is cheap and changes nothing.
JPEG/PNG images already stored in the target format are copied byte for byte; others are
re-encoded (JPEG at `quality`, 4:4:4).

Several runs can be exported into one folder (one `aux_data_dir` serves BAM's training *and*
validation): the coverage report `DIR/difaug-export.json` keeps one entry per run ever exported
there and totals over all of them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difaug import fsio, imageio, shards
from difaug.adapters.index import DriftScoreError, drift_filter
from difaug.adapters.run import Failure, RunView, open_run
from difaug.safe_names import is_safe_component, safe_component, safe_join

LAYOUTS = ("diffss-bam", "fss", "folder")
FORMATS = ("jpg", "png")
DEFAULT_FORMAT = {"diffss-bam": "jpg", "fss": "jpg", "folder": "png"}
BAM_CLASS_RANGE = {"pascal": (1, 20), "coco": (1, 80)}
REPORT_FILE = "difaug-export.json"
REPORT_VERSION = 2
CONDITION_SUFFIX = "control"  # DifFSS: f"{name}_{fg_cls}_control.jpg"
FSS_CLASS = 1  # DifFSS binarises FSS-1000 masks to 0/1: every aux file carries class 1
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ExportError(ValueError):
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


@dataclass(frozen=True)
class _Target:
    shard: int
    group: int
    in_group: int
    sample_id: str
    aux_index: int  # -1 for a condition image
    path: Path
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
) -> ExportResult:
    """Write one file per auxiliary image of `run_dir` into `out` in `layout`; report coverage.

    `image_format`: jpg or png (default jpg for diffss-bam and fss, as DifFSS saved; png for
    folder). `with_conditions`: also the condition images, under DifFSS's `_control` names.
    `min_drift_iou`: keep only aux images with `drift_iou >= min_drift_iou` (refused, naming
    `difaug score`, when the run has no scores). `progress(n)` is called with the number of files
    handled after each row group. The report in `out` merges with those of earlier exports there."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    fmt = (image_format or DEFAULT_FORMAT[layout]).lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise ExportError(f"unknown image format {image_format!r}; use jpg or png")
    if not 1 <= quality <= 100:
        raise ExportError(f"JPEG quality must be in 1..100, got {quality}")
    view = open_run(run_dir)
    out = Path(out)
    result = ExportResult(
        layout, out, fmt, view.num_aux, str(Path(run_dir).resolve()), min_drift_iou, with_conditions
    )
    try:
        keep = drift_filter(view, min_drift_iou)
    except DriftScoreError as e:
        raise ExportError(str(e)) from None

    # Every name is decided (and a layout that cannot describe the run refused) before writing.
    targets = _plan_targets(view, out, layout, fmt, keep, with_conditions, result)
    out.mkdir(parents=True, exist_ok=True)
    done_by_sample = _write_all(view, targets, fmt, quality, workers, result, progress)
    _coverage(view, done_by_sample, result)
    if write_report:
        result.folder_total = merge_report(out / REPORT_FILE, result)["total"]
    return result


def merge_report(path: Path, result: ExportResult) -> dict[str, Any]:
    """Write `result` into the folder's report, keeping the entries of other runs exported there.

    The report holds `runs` (one entry per run directory, the latest export of each) and `total`
    (summed over them); `incomplete` lists every run's incomplete supports, each with its `run`.
    What an export produced, not what one call did: re-exporting leaves the file as it is."""
    runs: dict[str, Any] = {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and isinstance(old.get("runs"), dict):
        runs = dict(old["runs"])
    elif isinstance(old, dict) and "supports" in old:  # a report from before merging existed
        runs[str(old.get("run") or "(an earlier export)")] = old
    skip = ("written", "unchanged", "out", "folder_total")
    entry = {k: v for k, v in result.to_dict().items() if k not in skip}
    runs[result.run] = entry
    keys = ("supports", "complete", "not_generated", "files", "conditions")
    total: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in runs.values()) for k in keys}
    total["incomplete"] = sum(len(r.get("incomplete") or ()) for r in runs.values())
    total["skipped"] = sum(len(r.get("skipped") or ()) for r in runs.values())
    total["filtered"] = sum(sum((r.get("filtered") or {}).values()) for r in runs.values())
    total["runs"] = len(runs)
    report = {
        "version": REPORT_VERSION,
        "out": str(result.out),
        "total": total,
        "files": total["files"],
        "incomplete": [
            {**c, "run": run} for run, r in sorted(runs.items()) for c in (r.get("incomplete") or ())
        ],
        "runs": dict(sorted(runs.items())),
    }
    text = json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    fsio.write_if_changed(path, text.encode("utf-8"))
    return report


# --- naming ------------------------------------------------------------------------------------


def bam_relative_name(image: str, dataset: str, class_id: int, k: int | str, fmt: str = "jpg") -> list[str]:
    """The path parts (under aux_data_dir) at which DifFSS-BAM looks for aux image k of a support
    (`k="control"`: where DifFSS saved its condition image)."""
    parts = image.split("/")  # BAM splits on "/" whatever the OS
    stem = parts[-1][:-4]
    name = f"{stem}_{class_id}_{k}.{fmt}"
    if dataset == "coco":
        return [parts[-2] if len(parts) > 1 else "", name]
    return [name]


def fss_relative_name(image: str, k: int | str, fmt: str = "jpg") -> list[str]:
    """DifFSS's FSS-1000 name: `{class folder}/{idx}_1_{k}.jpg` (`k="control"` for the condition)."""
    parts = image.replace("\\", "/").split("/")
    return [parts[-2] if len(parts) > 1 else "", f"{os.path.splitext(parts[-1])[0]}_{FSS_CLASS}_{k}.{fmt}"]


def folder_relative_name(class_name: str, sample_id: str, k: int | str, fmt: str = "png") -> list[str]:
    return [safe_component(class_name), f"{safe_component(sample_id)}_{k}.{fmt}"]


def _check_bam_rows(view: RunView) -> None:
    """Refuse a run the BAM layout cannot describe, naming the first offending rows."""
    datasets = [str(d or "").lower() for d in view.keys.column("dataset").to_pylist()]
    class_ids = view.keys.column("class_id").to_pylist()
    sample_ids = view.keys.column("sample_id").to_pylist()
    bad_ds = sorted(
        {(sid, d) for sid, d in zip(sample_ids, datasets, strict=True) if d not in BAM_CLASS_RANGE}
    )
    if bad_ds:
        examples = ", ".join(f"{sid} (dataset {d!r})" for sid, d in bad_ds[:3])
        raise ExportError(
            f"--layout diffss-bam needs every row's dataset to be pascal or coco; {len(bad_ds)} "
            f"sample(s) are not, e.g. {examples}. Use --layout fss for FSS-1000, --layout folder for other data."
        )
    bad_cls = sorted(
        {
            (sid, d, c)
            for sid, d, c in zip(sample_ids, datasets, class_ids, strict=True)
            if not BAM_CLASS_RANGE[d][0] <= c <= BAM_CLASS_RANGE[d][1]
        }
    )
    if bad_cls:
        sid, d, c = bad_cls[0]
        lo, hi = BAM_CLASS_RANGE[d]
        raise ExportError(
            f"BAM names aux files by the {d} class id ({lo}..{hi}), the support mask's value; "
            f"{len(bad_cls)} sample(s) have other class ids, e.g. {sid} with class_id {c}. Build the "
            "manifest with the dataset's class ids (difaug manifest build pascal5i/coco20i), or use "
            "--layout folder."
        )


def _relative_name(layout: str, cols: dict[str, list], i: int, k: int | str, fmt: str) -> list[str]:
    if layout == "diffss-bam":
        return bam_relative_name(
            cols["image"][i], str(cols["dataset"][i]).lower(), cols["class_id"][i], k, fmt
        )
    if layout == "fss":
        return fss_relative_name(cols["image"][i], k, fmt)
    return folder_relative_name(cols["class_name"][i], cols["sample_id"][i], k, fmt)


def _plan_targets(
    view: RunView,
    out: Path,
    layout: str,
    fmt: str,
    keep: list[bool],
    with_conditions: bool,
    result: ExportResult,
) -> list[_Target]:
    if layout == "diffss-bam":
        _check_bam_rows(view)
    cols = {n: view.keys.column(n).to_pylist() for n in view.keys.column_names}
    # Each support's kept rows in aux_index order: they become k = 0, 1, … without gaps.
    by_sample: dict[str, list[int]] = {}
    for i, sid in enumerate(cols["sample_id"]):
        by_sample.setdefault(sid, []).append(i)
    targets: list[_Target] = []
    owner: dict[Path, str] = {}

    def add(i: int, k: int | str, aux_index: int, column: str) -> None:
        sid = cols["sample_id"][i]
        parts = _relative_name(layout, cols, i, k, fmt)
        if layout != "folder":
            # The trainer must find the file under exactly this name: an unsafe one cannot be "fixed".
            unsafe = [p for p in parts if not is_safe_component(p)]
            if unsafe:
                reason = f"image path {cols['image'][i]!r} gives the unsafe file name {unsafe[0]!r}"
                result.skipped.append(SkippedRow(sid, aux_index, reason))
                return
        path = safe_join(out, *parts)
        if path in owner:
            result.skipped.append(
                SkippedRow(sid, aux_index, f"same file name as sample {owner[path]}: {path.name}")
            )
            return
        owner[path] = sid
        targets.append(
            _Target(cols["_shard"][i], cols["_group"][i], cols["_in_group"][i], sid, aux_index, path, column)
        )

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


def _write_all(
    view: RunView,
    targets: list[_Target],
    fmt: str,
    quality: int,
    workers: int,
    result: ExportResult,
    progress: Callable[[int], None] | None,
) -> Counter[str]:
    by_shard: dict[int, dict[int, list[_Target]]] = {}
    for t in targets:
        by_shard.setdefault(t.shard, {}).setdefault(t.group, []).append(t)
    done: Counter[str] = Counter()

    def one(item: tuple[_Target, bytes]) -> bool | str:
        """True/False: written/unchanged; a string: why the stored image cannot be exported."""
        target, data = item
        try:
            # Decode even when the bytes are copied as they are: a file the trainer cannot read
            # would be worse than a missing one (BAM falls back on a missing file, crashes on a bad one).
            image = imageio.load_image(data)
            encoded = convert(data, fmt, quality, image)
        except (imageio.ImageReadError, OSError, ValueError) as e:
            return f"stored {target.column} does not decode: {e}"
        return fsio.write_if_changed(target.path, encoded)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard, groups in sorted(by_shard.items()):
            with shards.open_shard(view.shard_paths[shard]) as pf:
                for group, group_targets in sorted(groups.items()):
                    # One row group of image bytes in memory at a time, never the whole shard.
                    columns = sorted({t.column for t in group_targets})
                    table = pf.read_row_group(group, columns=columns)
                    items = [(t, table.column(t.column)[t.in_group].as_py()["bytes"]) for t in group_targets]
                    for (t, _), outcome in zip(items, pool.map(one, items), strict=True):
                        if isinstance(outcome, str):
                            result.skipped.append(SkippedRow(t.sample_id, t.aux_index, outcome))
                            continue
                        result.written += outcome
                        result.unchanged += not outcome
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
        what = "condition" if s.aux_index < 0 else f"aux {s.aux_index}"
        skipped.setdefault(s.sample_id, []).append(f"{what} not exported: {s.reason}")

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
    unfinished = view.unfinished_shards()
    result.unfinished_shards = [{"name": s.name, "start": s.start, "stop": s.stop} for s in unfinished]
    # Rows of unfinished shards: those of a shard that failed as a whole are listed above with the
    # task's error; the rest were never attempted.
    failed_rows = {f.row for f in view.failures if f.shard in {s.name for s in unfinished}}
    result.not_generated = sum(s.num_rows for s in unfinished) - len(failed_rows)
    result.supports = result.complete + len(result.incomplete) + result.not_generated
    result.failures_by_reason = dict(sorted(view.failure_reasons().items()))
