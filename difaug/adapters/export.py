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
there and totals over all of them. Each entry records the files that run's export holds in DIR
(`paths`: relative path → a digest of the bytes written), so exporting the same run again with
another selection (a higher `--min-drift-iou`, another layout or format, without conditions)
removes the files of its earlier export that this one does not write — only those, only while
they still hold the bytes difaug wrote, and never one another run's entry records; files difaug
did not write are never touched. The entry is recorded before the first file is written (paths
about to be created included), so an interrupted export leaves nothing unrecorded.

One export at a time per DIR: `export_run` holds DIR's `.difaug.lock` (`rundir.RunLock`, owner
host and pid recorded, a dead owner's lock taken over) from its report read to its report write,
and a second export into DIR waits for it (`on_wait` is told whom it waits for), so two runs
exported into one folder at once both keep their entries. The report is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difaug.adapters.index import DriftScoreError, drift_filter
from difaug.adapters.run import Failure, RunView, open_run
from difaug.core import fsio, imageio
from difaug.core.errors import DifaugError
from difaug.core.names import UnsafePathError, is_safe_component, safe_component, safe_join
from difaug.run import rundir, shards

LAYOUTS = ("diffss-bam", "fss", "folder")
FORMATS = ("jpg", "png")
DEFAULT_FORMAT = {"diffss-bam": "jpg", "fss": "jpg", "folder": "png"}
BAM_CLASS_RANGE = {"pascal": (1, 20), "coco": (1, 80)}
REPORT_FILE = "difaug-export.json"
REPORT_VERSION = 3  # 3: each run's entry records its files (`paths`)
EXPORT_COMMAND = "difaug export"  # the holder named in DIR's lock
DIGEST_BYTES = 8  # blake2b of each exported file: enough to tell difaug's bytes from a replacement
CONDITION_SUFFIX = "control"  # DifFSS: f"{name}_{fg_cls}_control.jpg"
FSS_CLASS = 1  # DifFSS binarises FSS-1000 masks to 0/1: every aux file carries class 1
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

log = logging.getLogger(__name__)


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
    # The run's earlier export into `out` recorded no file list (a difaug before REPORT_VERSION 3):
    # files of it that this export does not write could not be told apart and were left.
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


# What one call did, not what the export holds: left out of the report's entry.
_CALL_ONLY = ("written", "unchanged", "out", "folder_total", "removed", "kept_stale")
_CALL_ONLY += ("earlier_unrecorded", "lock_taken_over")


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
    on_wait: Callable[[rundir.LockOwner | None], None] | None = None,
    force_unlock: bool = False,
) -> ExportResult:
    """Write one file per auxiliary image of `run_dir` into `out` in `layout`; report coverage.

    `image_format`: jpg or png (default jpg for diffss-bam and fss, as DifFSS saved; png for
    folder). `with_conditions`: also the condition images, under DifFSS's `_control` names.
    `min_drift_iou`: keep only aux images with `drift_iou >= min_drift_iou` (refused, naming
    `difaug score`, when the run has no scores). `progress(n)` is called with the number of files
    handled after each row group. The report in `out` merges with those of earlier exports there,
    and files of this run's earlier export there that this one does not write are removed (see
    the module docstring; `write_report=False` records nothing and removes nothing).

    Another export into `out` in progress is waited for (`on_wait(owner)` is called first; by
    default it is logged); a lock left by another host is refused unless `force_unlock`."""
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
    lock = rundir.RunLock(out, command=EXPORT_COMMAND, force=force_unlock, on_wait=on_wait or _log_wait(out))
    with lock:  # creates `out`; from the report's read to its write, no other export interferes
        if lock.took_over is not None:
            result.lock_taken_over = str(lock.took_over)
        report = out / REPORT_FILE
        runs = read_report(report) if write_report else {}
        recorded = _pending_record(runs, result, targets, out) if write_report else {}
        if write_report and recorded != _run_paths(runs.get(result.run)):
            # Before the first file: an interrupted export leaves every file it may create recorded.
            pending = {**(runs.get(result.run) or {}), "paths": recorded, "unfinished_export": True}
            save_report(report, {**runs, result.run: pending}, out)
        done_by_sample = _write_all(view, targets, fmt, quality, workers, result, progress)
        _coverage(view, done_by_sample, result)
        if write_report:
            _remove_stale(out, recorded, runs, result)
            result.folder_total = merge_report(report, result)["total"]
    return result


def _log_wait(out: Path) -> Callable[[rundir.LockOwner | None], None]:
    def wait(owner: rundir.LockOwner | None) -> None:
        who = f"{owner.command} ({owner})" if owner else "another export"
        log.warning("%s: waiting for %s to finish", out, who)

    return wait


def read_report(path: Path) -> dict[str, dict[str, Any]]:
    """The report's entries by run (`runs`); {} for a missing or unreadable report. A report from
    before merging (one run's fields at the top level) becomes that run's entry."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if isinstance(old, dict) and isinstance(old.get("runs"), dict):
        return {str(k): v for k, v in old["runs"].items() if isinstance(v, dict)}
    if isinstance(old, dict) and "supports" in old:
        return {str(old.get("run") or "(an earlier export)"): old}
    return {}


def merge_report(path: Path, result: ExportResult) -> dict[str, Any]:
    """Write `result` into the folder's report, keeping the entries of other runs exported there.

    The report holds `runs` (one entry per run directory, the latest export of each) and `total`
    (summed over them); `incomplete` lists every run's incomplete supports, each with its `run`.
    What an export produced, not what one call did: re-exporting leaves the file as it is.
    Callers hold the folder's lock (`export_run` does)."""
    runs = read_report(path)
    runs[result.run] = {k: v for k, v in result.to_dict().items() if k not in _CALL_ONLY}
    return save_report(path, runs, result.out)


def save_report(path: Path, runs: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    """The report of these run entries, with totals, written atomically (unless unchanged)."""
    keys = ("supports", "complete", "not_generated", "files", "conditions")
    total: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in runs.values()) for k in keys}
    total["incomplete"] = sum(len(r.get("incomplete") or ()) for r in runs.values())
    total["skipped"] = sum(len(r.get("skipped") or ()) for r in runs.values())
    total["filtered"] = sum(sum((r.get("filtered") or {}).values()) for r in runs.values())
    total["runs"] = len(runs)
    report = {
        "version": REPORT_VERSION,
        "out": str(out),
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
    base = out.resolve()

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

    def one(item: tuple[_Target, bytes]) -> tuple[bool, str] | str:
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
        return fsio.write_if_changed(target.path, encoded), file_digest(encoded)

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


# --- the run's file record and its earlier export's files ----------------------------------------


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def _run_paths(entry: Any) -> dict[str, str | None]:
    """A report entry's file record (relative path → digest; None: about to be created)."""
    paths = entry.get("paths") if isinstance(entry, dict) else None
    if not isinstance(paths, dict):
        return {}
    return {str(k): v if isinstance(v, str) else None for k, v in paths.items()}


def _pending_record(
    runs: dict[str, dict[str, Any]], result: ExportResult, targets: list[_Target], out: Path
) -> dict[str, str | None]:
    """The run's record while this export writes: the files of its earlier export, and those this
    one is about to create (digest None). A file already there is claimed only once written."""
    entry = runs.get(result.run)
    if entry is not None and not isinstance(entry.get("paths"), dict):
        result.earlier_unrecorded = True
    recorded = _run_paths(entry)
    for t in targets:
        if t.name not in recorded and not os.path.lexists(t.path):
            recorded[t.name] = None
    return recorded


def _recorded_file(base: Path, name: str) -> Path | None:
    """The file a report entry names, or None when the name cannot be one difaug wrote: an image
    name of safe components inside `base` (the report is a plain file: a hand-edited `../x`, a
    `notes.txt` or a folder symlinked elsewhere is never followed)."""
    parts = name.split("/")
    image_name = parts[-1].endswith(tuple(f".{f}" for f in FORMATS))
    if not image_name or not all(is_safe_component(p) for p in parts):
        return None
    try:
        folder = safe_join(base, *parts[:-1]) if len(parts) > 1 else base
    except UnsafePathError:
        return None
    return folder / parts[-1]


def _remove_stale(
    out: Path, recorded: dict[str, str | None], runs: dict[str, dict[str, Any]], result: ExportResult
) -> None:
    """Delete the files of the run's earlier export (and of an interrupted one) that this export
    did not write: a regular file that still holds the bytes difaug wrote (or, for a file an
    interrupted export was about to create, any), and that no other run's entry records. Folders
    left empty by that go too. Anything else stays, listed in `result.kept_stale`."""
    base = out.resolve()
    claimed = {name: run for run, entry in runs.items() if run != result.run for name in _run_paths(entry)}
    emptied: set[Path] = set()
    for name, digest in sorted(recorded.items()):
        if name in result.paths:
            continue
        path = _recorded_file(base, name)
        reason = ""
        if name in claimed:
            reason = f"also exported there from the run {claimed[name]}"
        elif path is None:
            reason = "not a file name difaug writes (the report was edited?)"
        else:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                reason = "no longer a plain file"
            elif digest is not None and file_digest(path.read_bytes()) != digest:
                reason = "changed since difaug wrote it"
        if reason:
            result.kept_stale.append({"path": name, "reason": reason})
            continue
        assert path is not None
        path.unlink(missing_ok=True)
        result.removed.append(name)
        emptied.add(path.parent)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        while folder != base and folder.is_relative_to(base):
            with contextlib.suppress(OSError):  # not empty (or not ours to judge): stays
                folder.rmdir()
            if folder.exists():
                break
            folder = folder.parent


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
