"""`difaug export`: what it prints, `--strict`, and the one-line errors of a bad layout or run."""

from __future__ import annotations

from pathlib import Path

from _runs import make_run
from typer.testing import CliRunner

from difaug.cli import app


def test_cli_export_prints_coverage_and_strict_fails(tmp_path: Path) -> None:
    run = make_run(tmp_path, num_aux=2, fail=["2008_000123_7"])
    out = tmp_path / "aux"
    cli = CliRunner()
    res = cli.invoke(app, ["export", str(run.run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2008_000123_7" in res.output and "truncated" in res.output
    assert "complete (2/2): 4" in res.output
    res = cli.invoke(app, ["export", str(run.run_dir), "--out", str(out), "--strict"])
    assert res.exit_code == 1
    assert "0 written, 8 already up to date" in res.output


def test_unknown_layout_and_not_a_run(tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "o"), "--layout", "hsnet"])
    assert res.exit_code == 2 and "unknown layout" in res.output
    res = cli.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "difaug.json" in res.output


def test_the_missing_file_note_is_the_layouts(tmp_path: Path) -> None:
    """The note on missing files comes from the layout: BAM's silent fallback, nothing for folder."""
    run = make_run(tmp_path, num_aux=2, fail=["2008_000123_7"])
    cli = CliRunner()
    res = cli.invoke(app, ["export", str(run.run_dir), "--out", str(tmp_path / "bam")])
    assert res.exit_code == 0 and "silently falls back to the real support image" in res.output
    res = cli.invoke(app, ["export", str(run.run_dir), "--out", str(tmp_path / "f"), "--layout", "folder"])
    assert res.exit_code == 0 and "silently falls back" not in res.output
