"""Bad input and a hostile environment: one test per case, each asserting the exact exit
code, that the one-line message names the file or row and the fix, and that nothing was lost or
half-written. Then a property-based run of odd manifest text through every verb.

Read-only and full folders are real: tests run as root (which ignores permission bits), so they
mount a read-only or a tiny tmpfs when the process may mount, fall back to `chattr +i` for the
read-only case, and skip only when neither works. The plan write hitting a full disk is also
simulated by raising the real errno from the atomic writer (the probe would catch a full tmpfs
first).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _runner_helpers import make_dataset, write_csv
from _runs import SampleSpec, make_run
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.core.folderlock import LOCK_FILE
from difaug.inputs.manifest import read_manifest, validate_manifest
from difaug.run import layout


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result: Any) -> str:
    """The error line: exactly one line, with no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def gen_args(manifest: Path, out: Path, models: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "-m",
        str(manifest),
        "-o",
        str(out),
        "--model",
        str(models),
        "--condition",
        "seg",
        "--num-aux",
        "1",
        "--resolution",
        "64",
        "--steps",
        "1",
        "--cluster",
        "sync",
        "--retries",
        "0",
        "--no-progress",
        *extra,
    ]


# ------------------------------------------------------------------------- real hostile folders


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, check=False
    )
    return r.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only_folder(target: Path, contents: Path | None = None) -> Iterator[str]:
    """`target` made read-only, holding a copy of `contents`; yields how ("mount" or "chattr")."""
    if _mount(target, "size=16m"):
        try:
            if contents is not None:
                shutil.copytree(contents, target, dirs_exist_ok=True)
            if subprocess.run(["mount", "-o", "remount,ro", str(target)], check=False).returncode == 0:
                yield "mount"
                return
        finally:
            _umount(target)
    target.mkdir(parents=True, exist_ok=True)
    if contents is not None:
        shutil.copytree(contents, target, dirs_exist_ok=True)
    dirs = [target, *(p for p in target.rglob("*") if p.is_dir())]
    if subprocess.run(["chattr", "+i", *map(str, dirs)], capture_output=True, check=False).returncode:
        pytest.skip("cannot make a read-only folder here (no mount, no chattr)")
    try:
        yield "chattr"
    finally:
        subprocess.run(["chattr", "-i", *map(str, dirs)], capture_output=True, check=False)


@contextlib.contextmanager
def full_folder(target: Path) -> Iterator[None]:
    """A real tmpfs of 256 KiB, filled to the last byte."""
    if not _mount(target, "size=256k"):
        pytest.skip("cannot mount a small tmpfs here (needs privileges)")
    try:
        with contextlib.suppress(OSError), (target / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        yield
    finally:
        _umount(target)


# ----------------------------------------------------------------------------- hostile cases, one each


def _strip_pair(folder: Path, size: tuple[int, int]) -> Path:
    """A manifest of one good row and one `size` image with a matching mask holding class 8."""
    rows = [dict(image="ok.png", mask="ok_m.png", class_id=8, class_name="cat", sample_id="good")]
    w, h = size
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(folder / "strip.png")
    Image.fromarray(np.full((h, w), 8, np.uint8)).save(folder / "strip_m.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "ok.png")
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 8
    Image.fromarray(m).save(folder / "ok_m.png")
    rows.append(dict(image="strip.png", mask="strip_m.png", class_id=8, class_name="cat", sample_id="strip"))
    return write_csv(folder / "manifest.csv", rows)


def test_elongated_image_refused_by_validate_and_generate(tmp_path: Path, tiny_models: Path) -> None:
    manifest = _strip_pair(tmp_path, (2000, 8))
    res = cli("manifest", "validate", manifest)
    assert res.exit_code == 1
    assert "strip.png" in res.output and "250.0:1" in res.output and "--max-aspect" in res.output
    # raising the aspect limit: the working size (128000×512 at the default 512) hits --max-side
    res = cli("manifest", "validate", manifest, "--max-aspect", "300")
    assert res.exit_code == 1 and "128000×512" in res.output and "--max-side" in res.output
    res = cli("manifest", "validate", manifest, "--max-aspect", "300", "--max-side", "200000")
    assert res.exit_code == 0, res.output
    # generate: the row is a recorded failure before any task; the good row is done; exit 1
    out = tmp_path / "run"
    res = cli(*gen_args(manifest, out, tiny_models))
    assert res.exit_code == 1, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["row"], f["stage"]) for f in summary["failures"]] == [(2, "validate")]
    assert "--max-aspect" in summary["failures"][0]["reason"]
    assert summary["done"] == 1


def test_prompt_template_with_unknown_placeholder_refused(tmp_path: Path, tiny_models: Path) -> None:
    manifest = make_dataset(tmp_path / "d", 1)
    out = tmp_path / "run"
    res = cli(*gen_args(manifest, out, tiny_models, "--prompt-template", "{class_name} {style}"))
    assert res.exit_code == 2
    line = one_line(res)
    assert "prompt_template" in line and "{style}" in line and "only {class_name}" in line
    assert not out.exists()  # refused before the plan


def test_unknown_compile_mode_refused_before_the_plan(tmp_path: Path, tiny_models: Path) -> None:
    manifest = make_dataset(tmp_path / "d", 1)
    out = tmp_path / "run"
    res = cli(*gen_args(manifest, out, tiny_models, "--compile", "--compile-mode", "foo"))
    assert res.exit_code == 2
    line = one_line(res)
    assert "compile_mode='foo'" in line and "max-autotune" in line and "--compile-mode" in line
    assert not out.exists()


@pytest.mark.parametrize("text", ["", "image,mask,class_id,class_name\n"], ids=["empty", "header-only"])
def test_empty_manifest_refused_by_generate_and_validate(
    tmp_path: Path, tiny_models: Path, text: str
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    out = tmp_path / "run"
    res = cli(*gen_args(manifest, out, tiny_models))
    assert res.exit_code == 2
    line = one_line(res)
    assert "m.csv" in line and "no rows" in line and "add one row" in line
    assert not out.exists()
    res = cli("manifest", "validate", manifest)
    assert res.exit_code == 2 and "no rows" in one_line(res)


def test_control_characters_in_class_name_drawn_and_printed_safely(tmp_path: Path) -> None:
    nasty = "cat\nwith a newline\x1b[31m, an escape\u202egpj.exe and " + "x" * 500
    run = make_run(
        tmp_path,
        (SampleSpec("a", 8, nasty, sample_id="id\r\n\x00\u200f2"), SampleSpec("b", 12, "dog")),
        num_aux=1,
    )
    before = snapshot(run.run_dir)
    sheet, html = tmp_path / "sheet.png", tmp_path / "page.html"
    res = cli("inspect", run.run_dir, "--sheet", sheet, "--html", html)
    assert res.exit_code == 0, res.output
    assert Image.open(sheet).size[0] > 0
    page = html.read_text(encoding="utf-8")
    assert "\x1b" not in page and "\x00" not in page
    assert "\x1b" not in res.output and "\u202e" not in res.output
    assert snapshot(run.run_dir) == before


def _finished_run(root: Path, models: Path) -> tuple[Path, Path]:
    manifest = make_dataset(root / "d", 2)
    out = root / "run"
    res = cli(*gen_args(manifest, out, models))
    assert res.exit_code == 0, res.output
    return manifest, out


def test_read_only_out_refused_before_any_shard(tmp_path: Path, tiny_models: Path) -> None:
    manifest = make_dataset(tmp_path / "d", 2)
    ro = tmp_path / "ro"
    with read_only_folder(ro) as how:
        res = cli(*gen_args(manifest, ro / "run", tiny_models))
        assert res.exit_code == 2, res.output
        line = one_line(res)
        assert str(ro) in line
        assert "read-only" in line if how == "mount" else "not permitted" in line
        assert "writable" in line or "permissions" in line
        assert snapshot(ro) == {}


def test_read_only_out_holding_a_run_is_left_intact(tmp_path: Path, tiny_models: Path) -> None:
    manifest, out = _finished_run(tmp_path, tiny_models)
    before = snapshot(out)
    ro = tmp_path / "ro"
    with read_only_folder(ro, out):
        res = cli(*gen_args(manifest, ro, tiny_models, "--overwrite"))
        assert res.exit_code == 2
        assert str(ro) in one_line(res)
        assert snapshot(ro) == before  # neither --overwrite nor the summary touched anything


def test_full_disk_refused_with_one_line(tmp_path: Path, tiny_models: Path) -> None:
    manifest = make_dataset(tmp_path / "d", 1)
    full = tmp_path / "full"
    with full_folder(full):
        res = cli(*gen_args(manifest, full / "run", tiny_models))
        assert res.exit_code == 2
        line = one_line(res)
        assert "no space left" in line and "free some space" in line and str(full) in line
        assert not layout.plan_path(full / "run").exists()
        assert sorted(p.name for p in full.rglob("*")) in (["filler"], ["filler", "run"])


def test_full_disk_while_the_plan_is_written(
    tmp_path: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plan write itself failing (simulated: the probe passed, then the disk filled up).
    manifest = make_dataset(tmp_path / "d", 1)
    out = tmp_path / "run"
    real = layout.atomic_write

    def full(path: Path, write: Any) -> None:
        def write_then_fail(tmp: Path) -> None:
            write(tmp)  # a real partial file exists at this point, as on a real full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() errors name no file

        real(path, write_then_fail)

    monkeypatch.setattr(layout, "atomic_write", full)
    res = cli(*gen_args(manifest, out, tiny_models))
    assert res.exit_code == 2
    line = one_line(res)
    assert "no space left" in line and str(out) in line
    # no plan, no half-written temp file; only the (released) lock file of the refused run
    assert [p.name for p in out.iterdir()] in ([], [LOCK_FILE])


def test_out_pointing_at_a_file(tmp_path: Path, tiny_models: Path) -> None:
    manifest = make_dataset(tmp_path / "d", 1)
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    for out in (target, target / "run"):
        res = cli(*gen_args(manifest, out, tiny_models))
        assert res.exit_code == 2
        line = one_line(res)
        assert str(target) in line and "not a folder" in line and "give a folder path" in line
    assert target.read_text() == "precious"


def test_export_to_read_only_or_full_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=1)
    before = snapshot(run.run_dir)
    ro = tmp_path / "ro"
    with read_only_folder(ro):
        res = cli("export", run.run_dir, "--out", ro / "aux", "--layout", "folder")
        assert res.exit_code == 2
        assert str(ro) in one_line(res)
    full = tmp_path / "full"
    with full_folder(full):
        res = cli("export", run.run_dir, "--out", full / "aux", "--layout", "folder")
        assert res.exit_code == 2
        line = one_line(res)
        assert "no space left" in line and str(full) in line
        # atomic writes: every file that exists is complete (no temp leftovers)
        leftovers = [p for p in (full / "aux").rglob("*") if ".tmp" in p.name]
        assert leftovers == []
    assert snapshot(run.run_dir) == before


def test_repeated_header_column_and_extra_fields(tmp_path: Path, tiny_models: Path) -> None:
    make_dataset(tmp_path, 1)
    dup = tmp_path / "dup.csv"
    dup.write_text("image,mask,class_id,class_name,class_id\nimg00000.jpg,img00000.png,1,aeroplane,8\n")
    res = cli("manifest", "validate", dup)
    assert res.exit_code == 2
    line = one_line(res)
    assert "dup.csv" in line and "line 1" in line and "'class_id'" in line and "keep one" in line
    res = cli(*gen_args(dup, tmp_path / "run", tiny_models))
    assert res.exit_code == 2 and not (tmp_path / "run").exists()

    extra = tmp_path / "extra.csv"
    extra.write_text(
        "image,mask,class_id,class_name\n"
        "img00000.jpg,img00000.png,1,aeroplane\n"
        "img00000.jpg,img00000.png,1,aero,plane\n"
    )
    res = cli("manifest", "validate", extra)
    assert res.exit_code == 1
    assert "line 3" in res.output and "quote values" in res.output
    jsonl = tmp_path / "dup.jsonl"
    jsonl.write_text(
        '{"image": "img00000.jpg", "mask": "img00000.png", "class_id": 1, "class_name": "a", "class_id": 2}\n'
    )
    res = cli("manifest", "validate", jsonl)
    assert res.exit_code == 1 and "line 1" in res.output and "appears twice" in res.output


def test_truncated_jpeg_with_end_marker_caught_by_deep(tmp_path: Path) -> None:
    make_dataset(tmp_path, 1, size=(256, 192))
    jpeg = tmp_path / "img00000.jpg"
    raw = jpeg.read_bytes()
    jpeg.write_bytes(raw[: len(raw) // 2] + b"\xff\xd9")
    manifest = tmp_path / "manifest.csv"
    assert cli("manifest", "validate", manifest).exit_code == 0  # header + end marker look fine
    res = cli("manifest", "validate", manifest, "--deep")
    assert res.exit_code == 1 and "img00000.jpg" in res.output
    (problem,) = validate_manifest(read_manifest(manifest), deep=True)
    assert (problem.row, problem.column, problem.file) == (1, "image", str(jpeg))
    assert "Corrupt JPEG data" in problem.reason and "replace it with a good copy" in problem.reason


def test_file_url_relative_to_the_manifest(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", 1)
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text(
        "image,mask,class_id,class_name\nfile://img00000.jpg,file://./img00000.png,1,aeroplane\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(elsewhere)
        res = cli("manifest", "validate", manifest)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------- property-based


def test_manifest_text_never_escapes_out_or_tracebacks(tiny_models: Path) -> None:
    from hypothesis import HealthCheck, Phase, example, given, settings
    from hypothesis import strategies as st

    tricky = st.sampled_from(
        [
            "../../escape",
            "/abs/path",
            "a\nb",
            "tab\there",
            "\x1b[2J",
            "\u202eevil.exe",
            "{class_name}",
            "{style}",
            "x" * 300,
            "..",
            "CON",
            " spaced ",
            "ümlaut 猫",
        ]
    )
    text = st.one_of(tricky, st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30))

    # No shrinking: each example runs every verb (~1 s); a failure prints its example as is.
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    @given(class_name=text, sample_id=text, prompt=st.one_of(st.just(""), text))
    @example(class_name="cat\nnewline \u202eevil", sample_id="../../escape", prompt="\x1b[2J{style}")
    def check(class_name: str, sample_id: str, prompt: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "box"
            root.mkdir()
            data = root / "data"
            make_dataset(data, 1)
            row = {"image": "img00000.jpg", "mask": "img00000.png", "class_id": 1, "dataset": "pascal"}
            row |= {"class_name": class_name, "sample_id": sample_id, "prompt": prompt}
            manifest = data / "m.jsonl"
            manifest.write_text(json.dumps(row) + "\n", encoding="utf-8")
            outside_before = sorted(p.name for p in Path(tmp).iterdir())
            out, export_dir = root / "run", root / "export"
            for args, codes in (
                (["manifest", "validate", manifest], (0, 1)),
                (gen_args(manifest, out, tiny_models), (0, 1)),
                (["inspect", out, "--sheet", out / "sheet.png", "--html", out / "page.html"], (0,)),
                (["export", out, "--out", export_dir, "--layout", "folder"], (0,)),
                (["export", out, "--out", export_dir / "bam", "--layout", "diffss-bam"], (0,)),
            ):
                res = cli(*args)
                assert res.exit_code in codes, (args[0], res.output)
                assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
                assert "Traceback" not in res.output and "\x1b" not in res.output
            for p in root.rglob("*"):
                resolved = p.resolve()
                assert any(resolved.is_relative_to(d.resolve()) for d in (data, out, export_dir)), p
            assert sorted(p.name for p in Path(tmp).iterdir()) == outside_before

    check()
