"""`difaug.core.fsio`: the one atomic write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from difaug.core import fsio


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"new")

    assert fsio.atomic_write(target, write) == target
    assert target.read_bytes() == b"new" and fsio.TEMP_NAME.match(seen[0])
    with pytest.raises(RuntimeError):
        fsio.atomic_write(target, lambda tmp: (tmp.write_bytes(b"half"), _boom()))
    assert target.read_bytes() == b"new"  # the old file stays whole
    assert sorted(os.listdir(target.parent)) == ["f.bin"]  # no temp file left


def _boom() -> None:
    raise RuntimeError("writer died")


def test_write_if_changed(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    assert fsio.write_if_changed(target, b"x") is True
    mtime = target.stat().st_mtime_ns
    assert fsio.write_if_changed(target, b"x") is False and target.stat().st_mtime_ns == mtime
    assert fsio.write_if_changed(target, b"yz", fsync=True) is True and target.read_bytes() == b"yz"
    assert fsio.write_text(tmp_path / "t.txt", "é").read_text(encoding="utf-8") == "é"
