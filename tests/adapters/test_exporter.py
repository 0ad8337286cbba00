"""`export_run`: the files of each layout, coverage, safe names, idempotence, merged reports, the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _runs import COCO_SPECS, PASCAL_SPECS, SampleSpec, make_run
from typer.testing import CliRunner

from difaug.adapters.export.exporter import export_run
from difaug.adapters.export.folder_report import REPORT_FILE
from difaug.adapters.export.result import ExportError
from difaug.cli import app
from difaug.core.folderlock import LOCK_FILE, LockError, lock_owner
from difaug.core.imageio import load_image, load_mask

# JPEG q95 with 4:4:4 chroma on the smooth synthetic pictures: measured mean |Δ| ≈ 0.6, max 5.
JPEG_MEAN_TOL = 1.5
JPEG_MAX_TOL = 10
NOT_EXPORTED = (REPORT_FILE, LOCK_FILE)


def _files(root: Path) -> set[str]:
    """The exported files: all but the report and the folder's lock."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in NOT_EXPORTED}


def _stem(image: str) -> str:
    return Path(image).stem


def test_bam_pascal_round_trip(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=3)
    out = tmp_path / "aux"
    result = export_run(run.run_dir, out, "diffss-bam")

    expected = {f"{_stem(s.image)}_{s.class_id}_{k}.jpg" for s in run.samples for k in range(3)}
    assert _files(out) == expected  # exactly one file per shard row, at BAM's name, nothing else
    assert result.written == len(expected) and result.unchanged == 0
    assert result.complete == result.supports == len(run.samples) and not result.incomplete
    for s in run.samples:
        for k, want in enumerate(run.aux[s.sample_id]):
            got = load_image(out / f"{_stem(s.image)}_{s.class_id}_{k}.jpg")
            assert got.shape == want.shape
            diff = np.abs(got.astype(int) - want)
            assert diff.mean() <= JPEG_MEAN_TOL and diff.max() <= JPEG_MAX_TOL


def test_bam_coco_keeps_parent_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, COCO_SPECS, num_aux=2)
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "diffss-bam")
    assert _files(out) == {
        "train2014/COCO_train2014_000000000009_51_0.jpg",
        "train2014/COCO_train2014_000000000009_51_1.jpg",
        "val2014/COCO_val2014_000000000042_18_0.jpg",
        "val2014/COCO_val2014_000000000042_18_1.jpg",
    }


def test_png_format_is_lossless(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=2)
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "diffss-bam", image_format="png")
    s = run.samples[0]
    for k in range(2):
        np.testing.assert_array_equal(
            load_image(out / f"{_stem(s.image)}_{s.class_id}_{k}.png"), run.aux[s.sample_id][k]
        )


def test_jpeg_shards_copied_byte_for_byte(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=2, image_format="jpeg")
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "diffss-bam", quality=50)  # quality only applies to re-encoding
    table = pq.read_table(run.run_dir / "shards" / "00000.parquet")
    for row in table.to_pylist():
        name = f"{_stem(row['image'])}_{row['class_id']}_{row['aux_index']}.jpg"
        assert (out / name).read_bytes() == row["aux_image"]["bytes"]


def test_folder_layout(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=2)
    out = tmp_path / "folder"
    export_run(run.run_dir, out, "folder")
    assert _files(out) == {f"{s.class_name}/{s.sample_id}_{k}.png" for s in run.samples for k in range(2)}
    s = run.samples[2]
    np.testing.assert_array_equal(
        load_image(out / s.class_name / f"{s.sample_id}_1.png"), run.aux[s.sample_id][1]
    )


def test_coverage_reports_failed_and_unfinished(tmp_path: Path) -> None:
    # 5 samples, shards of 2: shard 1 (rows 3-4) fails one sample, shard 2 (row 5) never ran.
    run = make_run(tmp_path, num_aux=2, fail=["2007_000039_20"], unfinished=[2])
    out = tmp_path / "aux"
    result = export_run(run.run_dir, out, "diffss-bam")
    assert result.supports == 5
    assert result.complete == 3
    assert [c.sample_id for c in result.incomplete] == ["2007_000039_20"]
    miss = result.incomplete[0]
    assert (miss.have, miss.expected, miss.row) == (0, 2, 3)
    assert "truncated file" in miss.reasons[0] and miss.reasons[0].startswith("read:")
    assert result.not_generated == 1
    assert result.unfinished_shards == [{"name": "00002", "start": 5, "stop": 6}]
    assert len(_files(out)) == 3 * 2
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["incomplete"][0]["sample_id"] == "2007_000039_20"
    assert saved["files"] == 6


def test_shard_that_failed_as_a_whole_reports_the_task_error(tmp_path: Path) -> None:
    # The runner writes no marker for a shard that kept failing; its rows' errors are in summary.json.
    run = make_run(tmp_path, num_aux=2, unfinished=[1, 2])
    task_error = "RuntimeError: CUDA error: device-side assert (simulated)"
    summary = {
        "all_failures": [
            {"row": r, "sample_id": run.samples[r - 1].sample_id, "stage": "task", "reason": task_error}
            for r in (3, 4)
        ]
    }
    (run.run_dir / "summary.json").write_text(json.dumps(summary))
    result = export_run(run.run_dir, tmp_path / "aux", "diffss-bam")
    assert [c.row for c in result.incomplete] == [3, 4]
    assert result.incomplete[0].reasons == (f"task: {task_error}",)
    assert result.not_generated == 1  # row 5: shard 2 was never attempted
    assert result.supports == 5 and result.complete == 2


EVIL = (
    SampleSpec("a", 1, "../../../escaped", sample_id="../../../escaped"),
    SampleSpec("b", 2, "/abs/olute", sample_id="/etc/passwd"),
    SampleSpec("c", 3, "back\\slash\\..\\..", sample_id="..\\..\\win"),
    SampleSpec("d", 4, "nul\x00byte", sample_id="nul\x00id"),
    SampleSpec("e", 5, "c" * 300, sample_id="é" * 400),
    SampleSpec("f", 6, "..", sample_id=".."),
    SampleSpec("g", 7, "a/b", sample_id="a_b-x"),
    SampleSpec("h", 8, "a_b", sample_id="a/b-x"),
)


def test_hostile_names_cannot_escape(tmp_path: Path) -> None:
    run = make_run(tmp_path, EVIL, num_aux=2)
    out = tmp_path / "a" / "b" / "c" / "out"  # deep enough that "../../../x" would still land in tmp_path
    out.parent.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    result = export_run(run.run_dir, out, "folder")
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert after == before  # nothing appeared outside DIR
    files = [p for p in out.rglob("*") if p.is_file() and p.name not in NOT_EXPORTED]
    assert len(files) == len(EVIL) * 2 == result.files  # distinct names: nothing overwrote anything
    root = out.resolve()
    for p in files:
        assert p.resolve().is_relative_to(root)
        assert len(p.relative_to(out).parts) == 2  # class folder / file, no deeper
        assert all(len(part.encode()) <= 255 and "\x00" not in part for part in p.relative_to(out).parts)
    assert result.complete == len(EVIL)


def test_bam_unsafe_coco_parent_is_skipped_and_reported(tmp_path: Path) -> None:
    specs = [
        COCO_SPECS[0],
        SampleSpec("COCO_x", 5, "airplane", dataset="coco", image="data/train2014/../COCO_x.jpg"),
    ]
    run = make_run(tmp_path, specs, num_aux=1)
    out = tmp_path / "aux"
    result = export_run(run.run_dir, out, "diffss-bam")
    assert _files(out) == {"train2014/COCO_train2014_000000000009_51_0.jpg"}
    assert not (tmp_path / "COCO_x_5_0.jpg").exists()
    assert [c.sample_id for c in result.incomplete] == ["COCO_x_5"]
    assert "unsafe file name '..'" in result.incomplete[0].reasons[0]


def test_reexport_is_idempotent(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=2)
    out = tmp_path / "aux"
    first = export_run(run.run_dir, out, "diffss-bam")

    def files() -> dict[Path, tuple[bytes, int]]:  # the report too; the lock's record changes
        return {
            p: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in out.rglob("*")
            if p.is_file() and p.name != LOCK_FILE
        }

    snapshot = files()
    second = export_run(run.run_dir, out, "diffss-bam")
    assert (second.written, second.unchanged) == (0, first.written)
    assert not second.removed and not second.kept_stale
    assert files() == snapshot
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    damaged = next(p for p in snapshot if p.suffix == ".jpg")
    damaged.write_bytes(b"not a jpeg")
    third = export_run(run.run_dir, out, "diffss-bam")
    assert third.written == 1 and damaged.read_bytes() == snapshot[damaged][0]

    # A fresh export elsewhere gives the same bytes (deterministic encoding).
    other = tmp_path / "aux2"
    export_run(run.run_dir, other, "diffss-bam")
    for p, (data, _) in snapshot.items():
        if p.name != REPORT_FILE:
            assert (other / p.relative_to(out)).read_bytes() == data
    assert os.listdir(other) and sorted(os.listdir(other)) == sorted(os.listdir(out))


@pytest.mark.slow
def test_end_to_end_on_a_real_tiny_run(tmp_path: Path, tiny_models: Path) -> None:
    """The real runner with the tiny random model, then export, index and inspect on its output."""
    from difaug.adapters import AuxIndex
    from difaug.core.config import Job, JobConfig, RuntimeConfig
    from difaug.run.driver import run

    src = make_run(tmp_path / "src", PASCAL_SPECS[:3], num_aux=2)  # only its manifest + images are used
    cfg = JobConfig(condition="seg", num_aux=2, resolution=64, shard_size=2, steps=2, model=str(tiny_models))
    rt = RuntimeConfig(cluster="sync", progress=False, batch_size=4)
    out_run = tmp_path / "run"
    summary = run(Job(str(src.manifest), str(out_run), cfg.validate(), rt.validate()))
    assert summary.done == 3

    out = tmp_path / "aux"
    result = export_run(out_run, out, "diffss-bam", image_format="png")
    assert result.complete == 3 and result.files == 6
    index = AuxIndex(out_run)
    for s in src.samples:
        shots = index.aux_images(Path(s.image).stem, s.class_id)
        for k, shot in enumerate(shots):
            assert shot.shape[:2] == load_mask(s.mask).shape  # the support mask applies pixel for pixel
            np.testing.assert_array_equal(
                load_image(out / f"{Path(s.image).stem}_{s.class_id}_{k}.png"), shot
            )
    res = CliRunner().invoke(app, ["inspect", str(out_run), "--sheet", str(tmp_path / "sheet.png")])
    assert res.exit_code == 0 and "no failed rows" in res.output
    assert (tmp_path / "sheet.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# Merged exports, conditions, the fss layout, undecodable images, the drift threshold


def test_two_runs_into_one_folder_report_covers_both(tmp_path: Path) -> None:
    train = make_run(tmp_path / "train", PASCAL_SPECS[:3], num_aux=2)
    val = make_run(tmp_path / "val", PASCAL_SPECS[3:], num_aux=2, fail=["2009_004567_12"])
    out = tmp_path / "aux"
    export_run(train.run_dir, out, "diffss-bam")
    export_run(val.run_dir, out, "diffss-bam")
    saved = json.loads((out / REPORT_FILE).read_text())
    assert set(saved["runs"]) == {str(train.run_dir.resolve()), str(val.run_dir.resolve())}
    assert saved["total"]["runs"] == 2
    assert saved["total"]["supports"] == 5 and saved["total"]["complete"] == 4
    assert saved["total"]["files"] == saved["files"] == 8
    assert [(c["sample_id"], c["run"]) for c in saved["incomplete"]] == [
        ("2009_004567_12", str(val.run_dir.resolve()))
    ]
    # Re-exporting one run replaces its own entry only; the total still covers both.
    export_run(train.run_dir, out, "diffss-bam")
    again = json.loads((out / REPORT_FILE).read_text())
    assert again == saved
    res = CliRunner().invoke(app, ["export", str(val.run_dir), "--out", str(out)])
    assert "all 2 runs exported" in res.output


def test_report_from_an_older_single_run_export_is_kept(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=1)
    out = tmp_path / "aux"
    out.mkdir()
    (out / REPORT_FILE).write_text(json.dumps({"supports": 7, "complete": 7, "files": 7, "incomplete": []}))
    export_run(run.run_dir, out, "diffss-bam")
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["total"]["runs"] == 2 and saved["total"]["supports"] == 7 + 2


def test_with_conditions_uses_diffss_names(tmp_path: Path) -> None:
    run = make_run(tmp_path, (*PASCAL_SPECS[:2], *COCO_SPECS), num_aux=1)
    out = tmp_path / "aux"
    result = export_run(run.run_dir, out, "diffss-bam", with_conditions=True)
    # ControlNet4FSS FSSpregenerate.py: cv2.imwrite(target_dir + img_name + f'_{fg_cls}_control.jpg', …)
    assert {p for p in _files(out) if "control" in p} == {
        "2007_000032_1_control.jpg",
        "2007_000032_15_control.jpg",
        "train2014/COCO_train2014_000000000009_51_control.jpg",
        "val2014/COCO_val2014_000000000042_18_control.jpg",
    }
    assert result.conditions == 4 and result.complete == 4
    cond = load_image(out / "2007_000032_1_control.jpg")
    want = run.conditions["2007_000032_1"]
    assert cond.shape == want.shape and np.abs(cond.astype(int) - want).mean() <= JPEG_MEAN_TOL


def test_fss_layout_keeps_the_folder_name(tmp_path: Path) -> None:
    specs = [
        SampleSpec(
            "3", 789, "hotel slipper", dataset="fss1000", parent="hotel_slipper", sample_id="hotel_slipper_3"
        ),
        SampleSpec("3", 790, "bus", dataset="fss1000", parent="bus", sample_id="bus_3"),
    ]
    run = make_run(tmp_path, specs, num_aux=2)
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "fss")
    # DifFSS's FSS-1000 output: {class}/{idx}_1_{k}.jpg under the tree's own folder name.
    assert _files(out) == {
        "hotel_slipper/3_1_0.jpg",
        "hotel_slipper/3_1_1.jpg",
        "bus/3_1_0.jpg",
        "bus/3_1_1.jpg",
    }


def test_undecodable_images_are_skipped_and_reported(tmp_path: Path) -> None:
    for fmt in ("jpg", "png"):  # copied as is (png) or re-encoded (jpg): both check the bytes decode
        run = make_run(tmp_path / fmt, PASCAL_SPECS[:3], num_aux=2, corrupt=["2007_000032_15"])
        out = tmp_path / fmt / "aux"
        result = export_run(run.run_dir, out, "diffss-bam", image_format=fmt)
        assert not [p for p in _files(out) if "2007_000032_15_" in p]
        assert {(s.sample_id, s.aux_index) for s in result.skipped} == {
            ("2007_000032_15", 0),
            ("2007_000032_15", 1),
        }
        assert all("does not decode" in s.reason for s in result.skipped)
        assert [c.sample_id for c in result.incomplete] == ["2007_000032_15"]
        saved = json.loads((out / REPORT_FILE).read_text())
        assert len(saved["runs"][str(run.run_dir.resolve())]["skipped"]) == 2
        res = CliRunner().invoke(
            app, ["export", str(run.run_dir), "--out", str(out), "--format", fmt, "--strict"]
        )
        assert res.exit_code == 1 and "does not decode" in res.output and "Traceback" not in res.output


def test_min_drift_iou_filters_renumbers_and_refuses_unscored(tmp_path: Path) -> None:
    drift = {
        "2007_000032_1": [0.9, 0.2, 0.8],
        "2007_000032_15": [0.1, 0.1, 0.1],
        "2007_000039_20": [0.5, 0.7, 0.6],
    }
    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=3, drift=drift)
    out = tmp_path / "aux"
    result = export_run(run.run_dir, out, "diffss-bam", image_format="png", min_drift_iou=0.55)
    # Kept ones get k = 0, 1, … without gaps: BAM reads k = 0..aux_shot-1.
    assert {p for p in _files(out) if p.startswith("2007_000032_1_")} == {
        "2007_000032_1_0.png",
        "2007_000032_1_1.png",
    }
    np.testing.assert_array_equal(load_image(out / "2007_000032_1_1.png"), run.aux["2007_000032_1"][2])
    assert not [p for p in _files(out) if p.startswith("2007_000032_15_")]
    assert result.filtered == {"2007_000032_1": 1, "2007_000032_15": 3, "2007_000039_20": 1}
    cov = {c.sample_id: c for c in result.incomplete}
    assert (
        cov["2007_000032_15"].filtered == 3
        and "below --min-drift-iou 0.55" in cov["2007_000032_15"].reasons[-1]
    )
    assert not result.missing_not_filtered  # nothing lacks for another reason: --strict passes
    res = CliRunner().invoke(
        app,
        ["export", str(run.run_dir), "--out", str(tmp_path / "a2"), "--min-drift-iou", "0.55", "--strict"],
    )
    assert res.exit_code == 0, res.output
    assert "5 aux image(s) left out" in res.output

    unscored = make_run(tmp_path / "u", PASCAL_SPECS[:2], num_aux=1)
    with pytest.raises(ExportError, match=r"difaug score .*run"):
        export_run(unscored.run_dir, tmp_path / "u" / "aux", min_drift_iou=0.5)
    res = CliRunner().invoke(
        app, ["export", str(unscored.run_dir), "--out", str(tmp_path / "u" / "a"), "--min-drift-iou", "0.5"]
    )
    assert res.exit_code == 2 and "difaug score" in res.output and not (tmp_path / "u" / "a").exists()


# --------------------------------------------------------------------------------------------------
# Re-exporting a run with another selection: its earlier files go, nobody else's


SCORES = {
    "2007_000032_1": [0.9, 0.2, 0.8],
    "2007_000032_15": [0.1, 0.1, 0.1],
    "2007_000039_20": [0.5, 0.7, 0.6],
}
# What --min-drift-iou 0.55 keeps of SCORES, renumbered k = 0, 1, … (png).
STRICT = {"2007_000032_1_0.png", "2007_000032_1_1.png", "2007_000039_20_0.png", "2007_000039_20_1.png"}


def _report(out: Path) -> dict:
    return json.loads((out / REPORT_FILE).read_text())


def test_reexport_with_another_selection_removes_only_its_earlier_files(tmp_path: Path) -> None:
    run = make_run(tmp_path / "a", PASCAL_SPECS[:3], num_aux=3, drift=SCORES)
    other = make_run(tmp_path / "b", PASCAL_SPECS[3:], num_aux=2)
    out = tmp_path / "aux"
    export_run(other.run_dir, out, "diffss-bam", image_format="png")
    others = _files(out)
    other_entry = _report(out)["runs"][str(other.run_dir.resolve())]
    first = export_run(run.run_dir, out, "diffss-bam", image_format="png", with_conditions=True)
    assert len(first.paths) == 3 * 3 + 3 and set(first.paths) == _files(out) - others
    assert _report(out)["runs"][str(run.run_dir.resolve())]["paths"] == first.paths
    # The user's own files, one of them under a name difaug could have written (k = 9), and one of
    # difaug's files the user replaced by hand: none of them may go.
    users = {
        out / "notes.txt": b"my notes",
        out / "2007_000032_1_9.png": b"not difaug's",
        out / "mine" / "x.png": b"mine too",
        out / "2007_000032_15_0.png": b"edited by hand",
    }
    for path, data in users.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)

    second = export_run(run.run_dir, out, "diffss-bam", image_format="png", min_drift_iou=0.55)
    user_names = {str(p.relative_to(out)) for p in users}
    assert _files(out) == STRICT | others | user_names  # higher k, conditions and filtered ones: gone
    assert all(path.read_bytes() == data for path, data in users.items())
    assert set(second.removed) == set(first.paths) - STRICT - {"2007_000032_15_0.png"}
    assert second.kept_stale == [{"path": "2007_000032_15_0.png", "reason": "changed since difaug wrote it"}]
    saved = _report(out)
    assert set(saved["runs"][str(run.run_dir.resolve())]["paths"]) == STRICT
    assert saved["runs"][str(other.run_dir.resolve())] == other_entry  # the other run's entry as it was
    assert saved["total"]["files"] == len(STRICT) + len(others)
    assert not any("unfinished_export" in entry for entry in saved["runs"].values())

    # Another format: every png of this run goes, the jpgs take their place; the CLI says so.
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--out", str(out), "--format", "jpg"])
    assert res.exit_code == 0, res.output
    assert "removed 4 file(s) of this run's earlier export" in " ".join(res.output.split())
    jpgs = {f"{_stem(s.image)}_{s.class_id}_{k}.jpg" for s in run.samples for k in range(3)}
    assert _files(out) == jpgs | others | user_names


def test_fss_reexport_removes_class_folders_it_emptied(tmp_path: Path) -> None:
    specs = [
        SampleSpec("3", 789, "bus", dataset="fss1000", parent="bus", sample_id="bus_3"),
        SampleSpec("4", 790, "cat", dataset="fss1000", parent="cat", sample_id="cat_4"),
    ]
    run = make_run(tmp_path, specs, num_aux=2, drift={"bus_3": [0.9, 0.9], "cat_4": [0.1, 0.2]})
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "fss")
    (out / "bus" / "readme.txt").write_text("the user's")
    result = export_run(run.run_dir, out, "fss", min_drift_iou=0.5)
    assert sorted(result.removed) == ["cat/4_1_0.jpg", "cat/4_1_1.jpg"]
    assert not (out / "cat").exists()  # a trainer listing class folders sees no empty class
    assert _files(out) == {"bus/3_1_0.jpg", "bus/3_1_1.jpg", "bus/readme.txt"}


class Killed(Exception):
    pass


def test_an_interrupted_export_leaves_nothing_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from difaug.core import fsio

    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=3, drift=SCORES)
    out = tmp_path / "aux"
    write = fsio.write_if_changed
    calls = []

    def killed_after_three_images(path, data, **kw):  # the report, 3 images, then the process dies
        if len(calls) == 4:
            raise Killed
        calls.append(path)
        return write(path, data, **kw)

    monkeypatch.setattr(fsio, "write_if_changed", killed_after_three_images)
    with pytest.raises(Killed):
        export_run(run.run_dir, out, "diffss-bam", image_format="png", workers=1)
    monkeypatch.undo()
    assert _files(out) == {"2007_000032_1_0.png", "2007_000032_1_1.png", "2007_000032_1_2.png"}
    entry = _report(out)["runs"][str(run.run_dir.resolve())]
    assert entry["unfinished_export"] and len(entry["paths"]) == 9  # all it was about to create
    assert lock_owner(out) is None  # the lock was released on the way out

    # The next export, with a stricter selection, takes away what the interrupted one left over.
    result = export_run(run.run_dir, out, "diffss-bam", image_format="png", min_drift_iou=0.55)
    assert result.removed == ["2007_000032_1_2.png"] and _files(out) == STRICT
    assert "unfinished_export" not in _report(out)["runs"][str(run.run_dir.resolve())]


def test_an_earlier_export_without_a_file_record_is_left_and_said(tmp_path: Path) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=3, drift=SCORES)
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "diffss-bam", image_format="png")
    everything = _files(out)
    saved = _report(out)
    for entry in saved["runs"].values():  # as a difaug before file records wrote it
        del entry["paths"]
    (out / REPORT_FILE).write_text(json.dumps(saved))

    res = CliRunner().invoke(
        app, ["export", str(run.run_dir), "--out", str(out), "--format", "png", "--min-drift-iou", "0.55"]
    )
    assert res.exit_code == 0, res.output
    assert "recorded no file list" in " ".join(res.output.split())
    assert _files(out) == everything  # nothing could be told apart: nothing removed
    # From now on the record exists: the next selection cleans up after this one.
    result = export_run(run.run_dir, out, "diffss-bam", image_format="png", min_drift_iou=0.65)
    assert not result.earlier_unrecorded
    assert sorted(result.removed) == ["2007_000039_20_1.png"]


def test_a_hand_edited_record_cannot_remove_other_files(tmp_path: Path) -> None:
    from difaug.adapters.export.folder_report import file_digest

    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=1)
    out = tmp_path / "aux"
    export_run(run.run_dir, out, "diffss-bam")
    victims = {tmp_path / "victim.png": b"outside", out / "notes.txt": b"inside, not an image"}
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"behind a symlink")
    (out / "link").symlink_to(tmp_path / "elsewhere")
    for path, data in victims.items():
        path.write_bytes(data)
    saved = _report(out)
    entry = saved["runs"][str(run.run_dir.resolve())]
    entry["paths"] |= {
        "../victim.png": file_digest(b"outside"),
        "notes.txt": file_digest(b"inside, not an image"),
        "link/x.png": file_digest(b"behind a symlink"),
    }
    (out / REPORT_FILE).write_text(json.dumps(saved))
    result = export_run(run.run_dir, out, "diffss-bam")
    assert not result.removed
    assert {k["path"] for k in result.kept_stale} == {"../victim.png", "notes.txt", "link/x.png"}
    assert all(path.read_bytes() == data for path, data in victims.items())
    assert (tmp_path / "elsewhere" / "x.png").read_bytes() == b"behind a symlink"


# --------------------------------------------------------------------------------------------------
# One export at a time per folder


_SLOW_EXPORT = """
import sys, time
from difaug.adapters.export.exporter import export_run
def slow(n):
    print("writing", flush=True)
    time.sleep(1.5)
export_run(sys.argv[1], sys.argv[2], "diffss-bam", progress=slow)
"""


def test_concurrent_exports_into_one_folder_keep_both_runs(tmp_path: Path) -> None:
    """A real second process exporting into the same folder: the later export waits for it, and
    the report keeps both runs."""
    import subprocess
    import sys

    first_run = make_run(tmp_path / "a", PASCAL_SPECS[:3], num_aux=2)
    second_run = make_run(tmp_path / "b", PASCAL_SPECS[3:], num_aux=2)
    out = tmp_path / "aux"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    first = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EXPORT, str(first_run.run_dir), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "writing"
        waited: list = []
        result = export_run(second_run.run_dir, out, "diffss-bam", on_wait=waited.append)
        assert first.wait(timeout=60) == 0, first.stdout.read()
    finally:
        if first.poll() is None:
            first.kill()
    # It waited for that process, named by the lock (an export, its pid), then exported.
    assert [(o.pid, o.command) for o in waited] == [(first.pid, "difaug export")]
    assert result.complete == 2
    saved = _report(out)
    assert set(saved["runs"]) == {str(first_run.run_dir.resolve()), str(second_run.run_dir.resolve())}
    assert saved["total"]["supports"] == 5 and saved["total"]["files"] == len(_files(out)) == 10
    assert lock_owner(out) is None


_HOLD = """
import sys, time
from difaug.core.folderlock import FolderLock
FolderLock(sys.argv[1], command="difaug export").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_dead_exports_lock_is_taken_over_another_hosts_needs_force(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=1)
    out = tmp_path / "aux"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = export_run(run.run_dir, out, "diffss-bam")
    assert f"pid {holder.pid}" in result.lock_taken_over and result.complete == 2

    other = tmp_path / "aux2"
    other.mkdir()
    record = {
        "host": "gpu-node-7",
        "pid": 4242,
        "started": "2026-01-01T00:00:00+00:00",
        "command": "difaug export",
    }
    (other / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(LockError, match=r"difaug export \(pid 4242 on host gpu-node-7.*--force-unlock"):
        export_run(run.run_dir, other, "diffss-bam")
    assert not _files(other)  # refused before writing anything
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--out", str(other)])
    assert res.exit_code == 2 and "--force-unlock" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--out", str(other), "--force-unlock"])
    assert res.exit_code == 0 and len(_files(other)) == 2


# --------------------------------------------------------------------------------------------------
# Nothing of another run overwritten, no export inside a run, a wait re-reads the run


def test_a_second_run_with_the_same_names_is_refused_before_writing(tmp_path: Path) -> None:
    first = make_run(tmp_path / "a", PASCAL_SPECS[:3], num_aux=2)
    second = make_run(tmp_path / "b", PASCAL_SPECS[:3], num_aux=2, drift=None)  # the same sample ids
    out = tmp_path / "aux"
    export_run(first.run_dir, out, "folder")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ExportError, match=r"6 file\(s\) of this export of .*/b/run.* run .*/a/run there"):
        export_run(second.run_dir, out, "folder")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    res = CliRunner().invoke(app, ["export", str(second.run_dir), "--out", str(out), "--layout", "folder"])
    assert res.exit_code == 2 and "its own folder" in res.output
    assert "finished shards are kept" not in res.output  # generate's hint, not export's
    export_run(first.run_dir, out, "folder")  # the same run again is its own files: fine


@pytest.mark.parametrize("inside", ["", "shards", "exp/aux"])
def test_out_inside_a_run_directory_is_refused(tmp_path: Path, inside: str) -> None:
    run = make_run(tmp_path, PASCAL_SPECS[:2], num_aux=1)
    out = run.run_dir / inside if inside else run.run_dir
    before = sorted(p for p in run.run_dir.rglob("*"))
    with pytest.raises(ExportError, match=r"inside the run directory .*difaug.json"):
        export_run(run.run_dir, out, "folder")
    assert sorted(p for p in run.run_dir.rglob("*")) == before


def test_an_export_that_waited_reads_the_run_again(tmp_path: Path) -> None:
    from difaug.core.folderlock import FolderLock
    from difaug.run import layout as run_layout

    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=2)
    out = tmp_path / "aux"
    holder = FolderLock(out, command="difaug export").acquire()

    def on_wait(owner: object) -> None:  # while it waits, the run changes: shard 0 is no longer done
        run_layout.marker_path(run.run_dir, 0).unlink()
        holder.release()

    result = export_run(run.run_dir, out, "folder", on_wait=on_wait)
    assert [s["name"] for s in result.unfinished_shards] == ["00000"]
    assert result.not_generated == 2 and result.complete == 1
    assert len(_files(out)) == 2  # only the shard still verified after the wait
