"""Helpers for the run-directory tests: a finished run, and the check that nothing was lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from _runner_helpers import all_keys, job, make_dataset, sleep_factory

from difaug.report import data as report
from difaug.run import layout
from difaug.run.driver import run

ROWS = 5  # make_dataset(…, 5) with shards of 2: shards 00000 [1,3), 00001 [3,5), 00002 [5,6)


def keys_on_disk(out: Path) -> list[str]:
    """Keys of the rows in every shard file on disk (verified or not)."""
    return [
        k
        for p in sorted((out / layout.SHARDS_DIR).glob("[0-9]*.parquet"))
        for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()
    ]


def reconciled(out: Path, rows: int = ROWS, num_aux: int = 2) -> None:
    """No row lost, none duplicated; inspect and summary.json agree with the shards."""
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == rows * num_aux
    assert sorted(keys) == sorted(keys_on_disk(out))  # every file on disk is a verified one
    rep = report.summarise(out)
    assert rep.rows == rows * num_aux and rep.samples == rows and not rep.invalid_shards
    summary = layout.read_summary(out)
    assert summary is not None
    assert summary.done + summary.failed + summary.skipped + summary.not_run == rows
    assert summary.ok and summary.all_failures == []


def done_run(tmp_path: Path) -> tuple[Path, Any]:
    """A finished run of ROWS rows in tmp_path/out, and its job."""
    m = make_dataset(tmp_path / "d", ROWS)
    out = tmp_path / "out"
    j = job(m, out)
    assert run(j, generator_factory=sleep_factory()).ok
    return out, j


def inspect_cli(out: Path) -> Any:
    """`difaug inspect OUT`, as the user runs it."""
    from typer.testing import CliRunner

    from difaug.cli import app

    return CliRunner().invoke(app, ["inspect", str(out)], terminal_width=300)
