"""difaug.inputs.manifest: read CSV/JSONL/Parquet alike, validate every row, and the `manifest validate` CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from _trees import class_mask, save_image, save_mask, truncate
from PIL import Image
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli._common import console
from difaug.inputs.manifest import (
    ManifestError,
    RowProblem,
    SizeLimits,
    fingerprint_samples,
    read_manifest,
    resolve_path,
    validate_manifest,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "manifests" / "demo" / "manifest.csv"


def _rows() -> list[dict]:
    return [
        {"image": "img/a.jpg", "mask": "msk/a.png", "class_id": 15, "class_name": "person", "dataset": "pascal",
         "split": "val", "fold": 3},
        {"image": "img/b.jpg", "mask": "msk/b.png", "class_id": 8, "class_name": "cat", "sample_id": "my-cat",
         "prompt": "a photo of a cat, {class_name}"},
        {"image": "https://example.org/c.jpg", "mask": "/abs/c.png", "class_id": 1, "class_name": "dining table"},
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Reading


def test_formats_give_the_same_samples_and_fingerprint(tmp_path: Path) -> None:
    manifests = {}
    for suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
        write_manifest(_rows(), tmp_path / f"m{suffix}")
        manifests[suffix] = read_manifest(tmp_path / f"m{suffix}")
    reference = manifests[".csv"]
    assert [s.sample_id for s in reference.samples] == ["a_15", "my-cat", "c_1"]
    s0 = reference.samples[0]
    assert (s0.row, s0.class_id, s0.fold, s0.dataset, s0.split) == (1, 15, 3, "pascal", "val")
    assert s0.image == str(tmp_path / "img" / "a.jpg")  # relative → against the manifest's folder
    assert reference.samples[2].image == "https://example.org/c.jpg"
    assert reference.samples[2].mask == "/abs/c.png"
    assert reference.samples[1].prompt == "a photo of a cat, {class_name}"
    assert reference.samples[1].fold is None
    for suffix, m in manifests.items():
        assert m.samples == reference.samples, suffix
        assert m.fingerprint == reference.fingerprint, suffix
        assert m.problems == []


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    write_manifest(_rows(), tmp_path / "a.csv")
    rows = _rows()
    rows[0]["class_id"] = 14
    write_manifest(rows, tmp_path / "b.csv")
    assert read_manifest(tmp_path / "a.csv").fingerprint != read_manifest(tmp_path / "b.csv").fingerprint
    assert fingerprint_samples([]) == fingerprint_samples([])


def test_read_manifest_csv_quirks(tmp_path: Path) -> None:
    # BOM, CRLF, float-looking ints, whitespace: all still one clean sample
    text = "\ufeffimage,mask,class_id,class_name,fold\r\n a.jpg ,a.png,15.0, person ,2.0\r\n"
    (tmp_path / "m.csv").write_bytes(text.encode())
    (s,) = read_manifest(tmp_path / "m.csv").samples
    assert (s.image, s.class_id, s.class_name, s.fold, s.sample_id) == (
        str(tmp_path / "a.jpg"),
        15,
        "person",
        2,
        "a_15",
    )


def test_read_manifest_row_problems(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "image,mask,class_id,class_name,fold\n"
        "a.jpg,a.png,1,x,\n"  # row 1 fine
        "b.jpg,b.png,,x,\n"  # row 2 empty class_id
        "c.jpg,c.png,one,x,\n"  # row 3 not an integer
        ",d.png,1,x,\n"  # row 4 empty image
        "e.jpg,e.png,1.5,x,\n"  # row 5 not an integer
        "f.jpg,f.png,1,x,first\n"  # row 6 bad fold
    )
    m = read_manifest(tmp_path / "m.csv")
    assert [s.row for s in m.samples] == [1]
    assert [(p.row, p.column) for p in m.problems] == [
        (2, "class_id"),
        (3, "class_id"),
        (4, "image"),
        (5, "class_id"),
        (6, "fold"),
    ]


def test_read_manifest_whole_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "cols.csv").write_text("image,class_id\na.jpg,1\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) mask, class_name"):
        read_manifest(tmp_path / "cols.csv")
    (tmp_path / "bad.jsonl").write_text(
        '{"image": "a", "mask": "b", "class_id": 1, "class_name": "x"}\nnot json\n'
    )
    with pytest.raises(ManifestError, match="line 2 is not valid JSON"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        write_manifest(_rows(), tmp_path / "out.xlsx")


def test_write_manifest_jsonl_uses_null_fold(tmp_path: Path) -> None:
    write_manifest(_rows(), tmp_path / "m.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["fold"] for r in lines] == [3, None, None]
    assert lines[0]["class_id"] == 15


# --------------------------------------------------------------------------------------------------
# Validation


def test_demo_manifest_validates_clean() -> None:
    m = read_manifest(DEMO)
    assert len(m.samples) >= 6
    assert m.problems == []
    assert validate_manifest(m) == []
    assert validate_manifest(m, deep=True) == []
    assert {s.dataset for s in m.samples} == {"demo"}
    for s in m.samples:  # the demo's paths are relative, so the set moves as one
        assert Path(s.image).is_relative_to(DEMO.parent)


def _broken_manifest(tmp_path: Path) -> tuple[Path, dict[int, tuple[str, str]]]:
    """A manifest with one fault per row; returns it and {row: (column, reason fragment)}."""
    d = tmp_path / "data"
    save_image(d / "good.jpg")
    save_mask(d / "good.png", class_mask({15: (1, 1, 50, 50), 8: (60, 40, 30, 30)}), "palette")
    save_image(d / "other.jpg", seed=2)
    save_mask(d / "other.png", class_mask({3: (1, 1, 50, 50)}), "L")
    truncate(save_image(d / "trunc.jpg", seed=3))
    save_mask(d / "small.png", class_mask({15: (1, 1, 10, 10)}, size=(64, 48)), "palette")
    (d / "text.png").write_text("not a png")
    colour = Image.new("RGB", (128, 96), (0, 0, 0))
    colour.putpixel((3, 3), (200, 10, 10))
    colour.save(d / "colour.png")
    rows = [
        ("good.jpg", "good.png", "15", "person", ""),  # 1 fine
        ("missing.jpg", "good.png", "15", "person", ""),  # 2
        ("good.jpg", "missing.png", "15", "person", "good_missingmask"),  # 3
        ("trunc.jpg", "good.png", "15", "person", "trunc_15"),  # 4
        ("good.jpg", "small.png", "15", "person", "good_small"),  # 5
        ("other.jpg", "other.png", "12", "dog", ""),  # 6 no pixel == 12
        ("other.jpg", "other.png", "255", "ignore", ""),  # 7
        ("other.jpg", "other.png", "3", "bird", "dup"),  # 8 dup with 10
        ("good.jpg", "good.png", "8", "cat", ""),  # 9 fine: second class of the same mask
        ("good.jpg", "good.png", "15", "person", "dup"),  # 10 dup with 8
        ("good.jpg", "text.png", "15", "person", "text"),  # 11
        ("good.jpg", "colour.png", "1", "thing", "colour"),  # 12
        ("good.jpg", "good.png", "", "person", "noclass"),  # 13 read problem
        ("good.jpg", "good.png", "0", "background", "zero"),  # 14
    ]
    lines = ["image,mask,class_id,class_name,sample_id"] + [
        ",".join(("data/" + r[0], "data/" + r[1], *r[2:])) for r in rows
    ]
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n")
    expected = {
        2: ("image", "file not found"),
        3: ("mask", "file not found"),
        4: ("image", "cannot decode"),
        5: ("mask", "mask is 64×48 but image is 128×96"),
        6: ("class_id", "mask has no pixel == 12 (values: 0, 3, 255)"),
        7: ("class_id", "class_id 255 is the ignore value"),
        8: ("sample_id", "duplicate sample_id (also row 10)"),
        10: ("sample_id", "duplicate sample_id (also row 8)"),
        11: ("mask", "cannot decode"),
        12: ("mask", "colour mask"),
        13: ("class_id", "empty class_id"),
        14: ("class_id", "class_id 0 is background"),
    }
    return path, expected


@pytest.mark.parametrize("deep", [False, True])
def test_validate_names_every_bad_row(tmp_path: Path, deep: bool) -> None:
    path, expected = _broken_manifest(tmp_path)
    problems = validate_manifest(read_manifest(path), deep=deep)
    assert {p.row for p in problems} == set(expected)  # rows 1 and 9 are fine, all others named
    for row, (column, reason) in expected.items():
        mine = [p for p in problems if p.row == row]
        assert any(p.column == column and reason in p.reason for p in mine), (row, mine)
    missing = next(p for p in problems if p.row == 2)
    assert missing.file == str(tmp_path / "data" / "missing.jpg")
    assert missing.sample_id == "missing_15"
    assert [p.row for p in problems] == sorted(p.row for p in problems)


def test_validate_empty_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,mask,class_id,class_name\n")
    assert validate_manifest(read_manifest(tmp_path / "m.csv")) == [
        RowProblem(0, "", str(tmp_path / "m.csv"), "manifest has no rows")
    ]


def test_validate_reads_each_file_once_and_handles_moved_sets(tmp_path: Path) -> None:
    # the whole demo folder moved elsewhere: relative paths follow it
    moved = tmp_path / "moved"
    shutil.copytree(DEMO.parent, moved)
    assert validate_manifest(read_manifest(moved / "manifest.csv"), workers=1) == []
    (moved / "images" / "chelsea.jpg").unlink()
    problems = validate_manifest(read_manifest(moved / "manifest.csv"))
    assert [(p.column, p.reason, Path(p.file).name) for p in problems] == [
        ("image", "file not found", "chelsea.jpg")
    ]


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # CliRunner is not a terminal: rich would wrap the table at 80 columns and split reasons.
    monkeypatch.setattr(console, "width", 400)


def test_cli_validate_demo_exit_0() -> None:
    result = CliRunner().invoke(app, ["manifest", "validate", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output


def test_cli_validate_broken_exit_1(tmp_path: Path, wide_console: None) -> None:
    path, expected = _broken_manifest(tmp_path)
    result = CliRunner().invoke(app, ["manifest", "validate", str(path), "--deep"])
    assert result.exit_code == 1
    table_rows = [line.split("│") for line in result.output.splitlines() if line.count("│") >= 4]
    named = {int(cells[1]) for cells in table_rows if cells[1].strip().isdigit()}
    assert named == set(expected)
    for _row, (_column, reason) in expected.items():
        assert reason in result.output
    assert f"in {len(expected)} of 14 row(s)" in result.output


def test_cli_validate_unreadable_manifest_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["manifest", "validate", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2


def test_validate_fsspec_urls(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    local = save_image(tmp_path / "a.jpg")
    fs.pipe("/difaug-test/a.jpg", local.read_bytes())
    mask = save_mask(tmp_path / "a.png", class_mask({7: (1, 1, 50, 50)}), "palette")
    fs.pipe("/difaug-test/a.png", mask.read_bytes())
    write_manifest(
        [
            {"image": "memory://difaug-test/a.jpg", "mask": "memory://difaug-test/a.png", "class_id": 7,
             "class_name": "cat"},
            {"image": "memory://difaug-test/gone.jpg", "mask": "memory://difaug-test/a.png", "class_id": 7,
             "class_name": "cat", "sample_id": "gone"},
        ],
        tmp_path / "urls.jsonl",
    )  # fmt: skip
    m = read_manifest(tmp_path / "urls.jsonl")
    assert m.samples[0].image == "memory://difaug-test/a.jpg"
    seen: list[tuple[str, int, int]] = []
    problems = validate_manifest(m, progress=lambda label, done, total: seen.append((label, done, total)))
    # The library reports per chunk of files read, up to all of them; the CLI draws (cli._common.progress_bar).
    assert seen and seen[-1][0] == "validating" and seen[-1][1] == seen[-1][2] == 3  # 2 images + 1 mask
    assert [(p.row, p.column, p.reason) for p in problems] == [(2, "image", "file not found")]
    fs.rm("/difaug-test", recursive=True)


def test_validate_survives_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest(
        [{"image": str(save_image(tmp_path / "a.jpg")), "mask": str(save_mask(tmp_path / "a.png",
          class_mask({7: (1, 1, 50, 50)}), "L")), "class_id": 7, "class_name": "cat"}],
        tmp_path / "m.csv",
    )  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    problems = validate_manifest(read_manifest(tmp_path / "m.csv"))
    assert {(p.column, "cannot decode" in p.reason) for p in problems} == {("image", True), ("mask", True)}


def test_non_utf8_manifest_and_file_urls(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"image,mask,class_id,class_name\ncaf\xe9.jpg,caf\xe9.png,1,x\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(bad)
    good = tmp_path / "m.csv"
    good.write_text("image,mask,class_id,class_name\na.jpg,a.png,1,x\n", encoding="utf-8")
    assert read_manifest(f"file://{good}").samples == read_manifest(good).samples


def test_file_url_relative_paths_resolve_against_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "image,mask,class_id,class_name\n"
        "file://img/a.jpg,file://./msk/a.png,1,x\n"
        f"file://{tmp_path}/abs.jpg,plain/b.png,2,y\n"
    )
    a, b = read_manifest(tmp_path / "m.csv").samples
    assert (a.image, a.mask) == (str(tmp_path / "img/a.jpg"), str(tmp_path / "msk/a.png"))
    assert (b.image, b.mask) == (f"file://{tmp_path}/abs.jpg", str(tmp_path / "plain/b.png"))
    assert resolve_path("file://x.jpg", "/data") == resolve_path("x.jpg", "/data") == "/data/x.jpg"


def test_repeated_columns_and_extra_fields(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("image,mask,class_name,class_id,class_name\na,b,x,1,y\n")
    with pytest.raises(ManifestError, match=r"line 1 \(the header\) names column\(s\) 'class_name'"):
        read_manifest(tmp_path / "dup.csv")
    (tmp_path / "dup.tsv").write_text("image\tmask\tclass_id\tclass_name\na\tb\t1\tx\textra\tmore\n")
    m = read_manifest(tmp_path / "dup.tsv")
    assert m.samples == []
    (p,) = m.problems
    assert p.row == 1 and "line 2: 2 more field(s) than the header's 4 columns" in p.reason
    assert "quote values that hold tabs" in p.reason
    (tmp_path / "k.jsonl").write_text(
        '{"image": "a", "mask": "b", "class_id": 1, "class_name": "x"}\n'
        "\n"
        '{"image": "a", "mask": "b", "class_id": 1, "class_name": "x", "mask": "c"}\n'
    )
    m = read_manifest(tmp_path / "k.jsonl")
    assert [s.row for s in m.samples] == [1]
    assert [(p.row, p.reason) for p in m.problems] == [(2, "line 3: key 'mask' appears twice; keep one")]


def _strip(folder: Path, w: int, h: int) -> Path:
    Image.new("RGB", (w, h)).save(folder / f"{w}x{h}.png")
    Image.new("L", (w, h), 1).save(folder / f"{w}x{h}_m.png")
    return folder / f"{w}x{h}.png"


def test_size_limits_name_the_row_the_limit_and_the_option(tmp_path: Path) -> None:
    rows = []
    for w, h in ((2000, 8), (64, 48), (1200, 100)):
        img = _strip(tmp_path, w, h)
        rows.append({"image": img.name, "mask": f"{w}x{h}_m.png", "class_id": 1, "class_name": "x"})
    write_manifest(rows, tmp_path / "m.csv")
    m = read_manifest(tmp_path / "m.csv")
    problems = validate_manifest(m)
    assert [(p.row, p.column) for p in problems] == [(1, "image")]
    assert "2000×8, aspect ratio 250.0:1 above the limit 16:1" in problems[0].reason
    assert "128000×512" in problems[0].reason and "--max-aspect" in problems[0].reason
    # the long side at the working size depends on the job's resolution: 1200×100 → 6144×512
    tight = validate_manifest(m, limits=SizeLimits(resolution=512, max_side=4096, max_aspect=1000))
    assert [p.row for p in tight] == [1, 3]
    assert "6144×512, longer than the limit 4096 px" in tight[1].reason and "--max-side" in tight[1].reason
    # at resolution 64, 1200×100 → 768×64 fits; 2000×8 → 16000×64 still does not
    low = validate_manifest(m, limits=SizeLimits(resolution=64, max_side=4096, max_aspect=1000))
    assert [p.row for p in low] == [1] and "16000×64" in low[0].reason
    few = validate_manifest(m, limits=SizeLimits(max_pixels=5000, max_aspect=1000, max_side=10**6))
    assert [p.row for p in few] == [1, 3] and "--max-pixels" in few[0].reason


def test_size_limits_come_from_the_job() -> None:
    from difaug.core.config import Job, JobConfig, RuntimeConfig

    job = Job(
        "m.csv", "out", JobConfig(resolution=256), RuntimeConfig(max_side=100, max_aspect=2, max_pixels=9)
    )
    assert SizeLimits.for_job(job) == SizeLimits(256, 100, 2, 9)


def test_a_folder_given_as_the_manifest_says_it_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "d" / "images"
    folder.mkdir(parents=True)
    with pytest.raises(ManifestError, match="is a folder, not a manifest file") as e:
        read_manifest(folder)
    assert "not found" not in str(e.value)
    out = tmp_path / "out"
    for argv in (["manifest", "validate", str(folder)], ["generate", "-m", str(folder), "--out", str(out)]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "is a folder, not a manifest file" in lines[0], result.output
    assert not out.exists()  # refused before any plan is written


def _block_http_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if aiohttp and requests were not installed (whether or not they are here)."""
    for name in ("aiohttp", "requests"):
        monkeypatch.setitem(sys.modules, name, None)


def test_http_urls_without_their_backend_are_refused_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _block_http_backend(monkeypatch)
    with pytest.raises(
        ManifestError, match=r"https:// URLs need aiohttp and requests.*pip install 'difaug\[http\]'"
    ):
        read_manifest("https://example.org/manifest.csv")
    image = str(save_image(tmp_path / "a.jpg"))
    mask = str(save_mask(tmp_path / "a.png", class_mask({7: (1, 1, 50, 50)}), "L"))
    rows = [{"image": image, "mask": mask, "class_id": 7, "class_name": "cat", "sample_id": "local"}]
    rows += [{"image": f"http://example.org/{i}.jpg", "mask": mask, "class_id": 7, "class_name": "cat",
              "sample_id": f"web{i}"} for i in range(7)]  # fmt: skip
    write_manifest(rows, tmp_path / "m.csv")
    m = read_manifest(tmp_path / "m.csv")  # the manifest itself is local: it reads
    with pytest.raises(ManifestError) as e:
        validate_manifest(m)  # refused before any file is fetched: nothing here reaches the network
    assert str(e.value) == (
        f"{tmp_path / 'm.csv'}: rows 2, 3, 4, 5, 6, … (7 rows): http:// URLs need aiohttp and requests, not "
        "installed: pip install 'difaug[http]' (or pip install aiohttp requests)"
    )
    out = tmp_path / "out"
    for argv in (
        ["manifest", "validate", str(tmp_path / "m.csv")],
        ["generate", "-m", str(tmp_path / "m.csv"), "--out", str(out)],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {e.value}"]
    assert not out.exists()  # generate refuses before the plan
