"""Verified shards: every way a finished shard can break is named with its file and fix, then redone.

Every case breaks a real run directory the way a user (or a crash, or a second run) would, then
checks the message names the file and the fix, and that no row is lost or duplicated: `inspect`
(`report.summarise`) and `summary.json` agree with the rows actually in the shards."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from _rundirs import done_run, inspect_cli, reconciled
from _runner_helpers import all_keys, sleep_factory

from difaug.report import data as report
from difaug.run import layout, shards, verify
from difaug.run.driver import run


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:  # truncate -s 50%
        fh.truncate(path.stat().st_size // 2)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55
    path.write_bytes(bytes(data))


def _edit_marker(out: Path, index: int, **changes: Any) -> None:
    path = layout.marker_path(out, index)
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


BREAKAGES = {
    "truncated": (lambda out: _truncate(layout.shard_path(out, 1)), r"00001\.parquet: \d+ bytes, its marker"),
    "flipped bytes": (lambda out: _flip(layout.shard_path(out, 1)), r"00001\.parquet: sha256 differs"),
    "shard deleted": (lambda out: layout.shard_path(out, 1).unlink(), r"00001\.parquet is missing"),
    "corrupt marker": (
        lambda out: layout.marker_path(out, 1).write_text("{not json"),
        r"00001\.json is unreadable",
    ),
    "foreign marker": (
        lambda out: _edit_marker(out, 1, plan_hash="f" * 64),
        r"00001\.json: marker of another plan",
    ),
    "marker of another shard": (
        lambda out: _edit_marker(out, 1, shard=0),
        r"00001\.json: marker of shard 0 rows \[3, 5\], plan says \[3, 5\)",
    ),
    "marker without done": (
        lambda out: _edit_marker(out, 1, done=None),
        r"00001\.json: not a valid shard marker \(missing field 'done'\)",
    ),
    "inconsistent counts": (
        lambda out: _edit_marker(out, 1, done=1),
        r"00001\.json: inconsistent marker \(done 1 \+ failed 0 != 2 rows",
    ),
    "old marker": (lambda out: _edit_marker(out, 1, version=1), r"older difaug"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_broken_shard_is_named_then_redone(tmp_path: Path, case: str) -> None:
    out, j = done_run(tmp_path)
    before = {i: layout.shard_path(out, i).read_bytes() for i in (0, 2)}
    break_it, reason = BREAKAGES[case]
    break_it(out)

    check = verify.verify_run(out)

    assert [c.shard.name for c in check.invalid] == ["00001"]
    assert [c.shard.index for c in check.done] == [0, 2]
    assert check.unfinished == [check.plan.shards[1]]

    assert re.search(reason, check.invalid[0].reason), check.invalid[0].reason
    # Readers see only verified shards: no half shard, no foreign rows.
    assert sorted(all_keys(out)) == sorted(
        k for k in all_keys(out) if not k.startswith(("img00002", "img00003"))
    )
    rep = report.summarise(out)
    assert rep.rows == 6 and rep.shards_done == 2 and "00001" in rep.invalid_shards
    assert "rerun the same `difaug generate` command" in rep.fix
    res = inspect_cli(out)
    assert res.exit_code == 0 and "1 invalid shard(s)" in res.output and "00001" in res.output
    assert "fix: rerun" in res.output

    # generate redoes exactly that shard and says so; the others are not touched.
    from rich.console import Console

    from difaug.cli._progress import GenerateView

    console = Console(record=True, width=300)
    s = run(j, generator_factory=sleep_factory(), on_event=GenerateView(console, bar=False))
    assert "1 shard(s) were invalid and are redone: 00001" in console.export_text()
    assert (s.done, s.skipped, s.shards_done, list(s.redone_shards)) == (2, 3, 1, ["00001"])
    assert {i: layout.shard_path(out, i).read_bytes() for i in (0, 2)} == before
    reconciled(out)


def test_missing_marker_is_missing_not_invalid(tmp_path: Path) -> None:
    out, _ = done_run(tmp_path)
    layout.marker_path(out, 2).unlink()
    check = verify.verify_run(out)
    assert [c.status for c in check.checks] == ["done", "done", "missing"] and check.invalid == []


def test_verification_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = done_run(tmp_path)
    verify._SHA_CACHE.clear()
    opened: list[str] = []
    real = verify._hash_file
    monkeypatch.setattr(verify, "_hash_file", lambda path: opened.append(str(path)) or real(path))
    for _ in range(3):
        assert len(verify.verify_run(out).done) == 3
    assert len(opened) == 3  # one hash per shard, then (size, mtime, inode) hits
    _flip(layout.shard_path(out, 0))  # a rewrite changes mtime: hashed again, and caught
    assert [c.shard.index for c in verify.verify_run(out).invalid] == [0]


def test_rewritten_shard_is_vouched_for_by_rewrite_marker(tmp_path: Path) -> None:
    """A verb that rewrites a finished shard (scores added) records the new file in the marker."""
    out, _ = done_run(tmp_path)
    stats = layout.read_marker(out, 0)
    rows = shards.read_shard(layout.shard_path(out, 0)).to_pylist()
    for r in rows:
        r["drift_iou"], r["drift_segments"] = 0.5, 3
    shards.write_shard(layout.shard_path(out, 0), rows)
    assert [c.shard.index for c in verify.verify_run(out).invalid] == [0]
    verify.rewrite_marker(out, stats)
    assert len(verify.verify_run(out).done) == 3
    scores = shards.read_shard(layout.shard_path(out, 0), ["drift_segments"]).column(0).to_pylist()
    assert set(scores) == {3}


def test_fix_command_names_the_recorded_command(tmp_path: Path) -> None:
    from dataclasses import replace

    out, _ = done_run(tmp_path)
    plan = layout.read_plan(out)
    assert verify.fix_command(plan) == "rerun the same `difaug generate` command; it redoes only these shards"
    named = replace(plan, command="difaug generate --manifest m.csv --out o", cwd="/work")
    assert verify.fix_command(named) == (
        "rerun `difaug generate --manifest m.csv --out o` (in /work); it redoes only these shards"
    )


def test_failures_of_counts_verified_shards_only(tmp_path: Path) -> None:
    from dataclasses import replace

    from difaug.run.records import Failure

    out, _ = done_run(tmp_path)
    check = verify.verify_run(out)
    failure = Failure(1, "img00000_0", "read", "unreadable", "00000")
    with_failure = replace(check.done[0], stats=replace(check.done[0].stats, failures=(failure,)))
    invalid = replace(
        check.done[1], status="invalid", stats=replace(check.done[1].stats, failures=(failure,))
    )
    assert verify.failures_of([with_failure, invalid, check.done[2]]) == [failure]
