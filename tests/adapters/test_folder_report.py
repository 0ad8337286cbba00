"""`difaug.adapters.export.folder_report`: the folder's report and what a re-export may remove."""

from __future__ import annotations

import json
from pathlib import Path

from difaug.adapters.export.folder_report import (
    REPORT_FILE,
    file_digest,
    pending_record,
    read_report,
    remove_stale,
    save_report,
)
from difaug.adapters.export.result import ExportResult


def test_read_report_of_each_shape(tmp_path: Path) -> None:
    path = tmp_path / REPORT_FILE
    assert read_report(path) == {}  # none yet
    path.write_text("{not json")
    assert read_report(path) == {}
    path.write_text(json.dumps({"supports": 3, "run": "/r/a"}))  # one export's fields at the top
    assert read_report(path) == {"/r/a": {"supports": 3, "run": "/r/a"}}
    path.write_text(json.dumps({"runs": {"/r/a": {"supports": 1}, "/r/b": "junk"}}))
    assert read_report(path) == {"/r/a": {"supports": 1}}


def test_save_report_totals_every_run(tmp_path: Path) -> None:
    runs = {
        "/r/b": {
            "supports": 2,
            "complete": 1,
            "files": 4,
            "incomplete": [{"sample_id": "x"}],
            "filtered": {"x": 2},
        },
        "/r/a": {"supports": 3, "complete": 3, "files": 6, "conditions": 3},
    }
    report = save_report(tmp_path / REPORT_FILE, runs, tmp_path)
    assert report["total"] == {
        "supports": 5,
        "complete": 4,
        "not_generated": 0,
        "files": 10,
        "conditions": 3,
        "incomplete": 1,
        "skipped": 0,
        "filtered": 2,
        "runs": 2,
    }
    assert report["incomplete"] == [{"sample_id": "x", "run": "/r/b"}]
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == report


def test_remove_stale_removes_only_unchanged_files_of_this_run(tmp_path: Path) -> None:
    out = tmp_path / "aux"
    (out / "cls").mkdir(parents=True)
    for name in ("cls/old.png", "changed.png", "shared.png", "kept.png"):
        (out / name).write_bytes(name.encode())
    (out / "changed.png").write_bytes(b"edited by hand")
    recorded = {
        name: file_digest(name.encode())
        for name in ("cls/old.png", "changed.png", "shared.png", "kept.png", "gone.png")
    } | {"../outside.png": None, "notes.txt": None}
    runs = {"/r/other": {"paths": {"shared.png": "x"}}}
    result = ExportResult(
        "folder", out, "png", 1, run="/r/this", paths={"kept.png": file_digest(b"kept.png")}
    )
    remove_stale(out, recorded, runs, result)
    assert result.removed == ["cls/old.png"] and not (out / "cls").exists()  # its emptied folder too
    assert {k["path"]: k["reason"] for k in result.kept_stale} == {
        "../outside.png": "not a file name difaug writes (the report was edited?)",
        "changed.png": "changed since difaug wrote it",
        "notes.txt": "not a file name difaug writes (the report was edited?)",
        "shared.png": "also exported there from the run /r/other",
    }
    assert (out / "kept.png").exists() and (out / "changed.png").exists() and (out / "shared.png").exists()


def test_pending_record_claims_only_files_not_there_yet(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"someone's")
    result = ExportResult("folder", tmp_path, "png", 1, run="/r/a")
    runs = {"/r/a": {"supports": 1}}  # an entry without a file record
    record = pending_record(
        runs, result, [("there.png", tmp_path / "there.png"), ("new.png", tmp_path / "new.png")]
    )
    assert record == {"new.png": None} and result.earlier_unrecorded
