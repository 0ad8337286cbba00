"""`DIR/difaug-export.json`: every run exported into DIR, the files each holds, and the totals.

Several runs can be exported into one folder (one `aux_data_dir` serves BAM's training *and*
validation): the report keeps one entry per run ever exported there and totals over all of them.
Each entry records the files that run's export holds in DIR (`paths`: relative path → a digest of
the bytes written), so exporting the same run again with another selection (a higher
`--min-drift-iou`, another layout or format, without conditions) removes the files of its earlier
export that this one does not write — only those, only while they still hold the bytes difaug
wrote, and never one another run's entry records; files difaug did not write are never touched.
The entry is recorded before the first file is written (paths about to be created included), so
an interrupted export leaves nothing unrecorded. Callers hold DIR's lock (`export_run` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from difaug.adapters.export.layouts import FORMATS
from difaug.adapters.export.result import ExportError, ExportResult
from difaug.core import fsio
from difaug.core.names import UnsafePathError, is_safe_component, safe_join

REPORT_FILE = "difaug-export.json"
REPORT_VERSION = 3  # 3: each run's entry records its files (`paths`)
DIGEST_BYTES = 8  # blake2b of each exported file: enough to tell difaug's bytes from a replacement

# What one call did, not what the export holds: left out of the report's entry.
_CALL_ONLY = ("written", "unchanged", "out", "folder_total", "removed", "kept_stale")
_CALL_ONLY += ("earlier_unrecorded", "lock_taken_over")


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def read_report(path: Path) -> dict[str, dict[str, Any]]:
    """The report's entries by run (`runs`); {} for a missing or unreadable report. A report of a
    single export (one run's fields at the top level) becomes that run's entry."""
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
    What an export produced, not what one call did: re-exporting leaves the file as it is."""
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


def run_paths(entry: Any) -> dict[str, str | None]:
    """A report entry's file record (relative path → digest; None: about to be created)."""
    paths = entry.get("paths") if isinstance(entry, dict) else None
    if not isinstance(paths, dict):
        return {}
    return {str(k): v if isinstance(v, str) else None for k, v in paths.items()}


def pending_record(
    runs: dict[str, dict[str, Any]], result: ExportResult, targets: Iterable[tuple[str, Path]]
) -> dict[str, str | None]:
    """The run's record while this export writes: the files of its earlier export, and those this
    one is about to create (`targets`: relative name, path; digest None). A file already there is
    claimed only once written."""
    entry = runs.get(result.run)
    if entry is not None and not isinstance(entry.get("paths"), dict):
        result.earlier_unrecorded = True
    recorded = run_paths(entry)
    for name, path in targets:
        if name not in recorded and not os.path.lexists(path):
            recorded[name] = None
    return recorded


def refuse_clashes(out: Path, runs: dict[str, dict[str, Any]], run: str, names: Iterable[str]) -> None:
    """ExportError when a file this export of `run` would write is one another run's entry
    records: the second run would overwrite the first's image under the same name (same sample
    ids). Called before anything is written."""
    claimed = {name: other for other, entry in runs.items() if other != run for name in run_paths(entry)}
    clashes = [(name, claimed[name]) for name in names if name in claimed]
    if clashes:
        name, other = clashes[0]
        raise ExportError(
            f"{out}: {len(clashes)} file(s) of this export of {run} are already the export of the run "
            f"{other} there, e.g. {name}; nothing was written. Export each run into its own folder "
            "(its file names come from the sample ids, which the two runs share)"
        )


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


def _why_kept(path: Path | None, digest: str | None, claimed_by: str | None) -> str | None:
    """Why a recorded file must stay ("" = remove it; None = it is gone already)."""
    if claimed_by is not None:
        return f"also exported there from the run {claimed_by}"
    if path is None:
        return "not a file name difaug writes (the report was edited?)"
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return "no longer a plain file"
    if digest is not None and file_digest(path.read_bytes()) != digest:
        return "changed since difaug wrote it"
    return ""


def remove_stale(
    out: Path, recorded: dict[str, str | None], runs: dict[str, dict[str, Any]], result: ExportResult
) -> None:
    """Delete the files of the run's earlier export (and of an interrupted one) that this export
    did not write: a regular file that still holds the bytes difaug wrote (or, for a file an
    interrupted export was about to create, any), and that no other run's entry records. Folders
    left empty by that go too. Anything else stays, listed in `result.kept_stale`."""
    base = out.resolve()
    claimed = {name: run for run, entry in runs.items() if run != result.run for name in run_paths(entry)}
    emptied: set[Path] = set()
    for name, digest in sorted(recorded.items()):
        if name in result.paths:
            continue
        path = _recorded_file(base, name)
        reason = _why_kept(path, digest, claimed.get(name))
        if reason:
            result.kept_stale.append({"path": name, "reason": reason})
        elif reason == "" and path is not None:
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
