"""`difaug.core.names`: file names from manifest values that cannot escape their folder and never
make two values one file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from difaug.core.names import (
    MAX_COMPONENT_BYTES,
    UnsafePathError,
    is_safe_component,
    plain_stem,
    safe_component,
    safe_join,
)

HOSTILE = [
    "../../etc/passwd",
    "..",
    ".",
    ".hidden",
    "a/b",
    "a\\b",
    "nul\x00byte",
    'con:<>"|?*',
    "trailing. ",
    "photo\u202egpj.exe",
    "zero\u200bwidth",
    "",
    "x" * 300,
    "猫" * 100,
]


@pytest.mark.parametrize("value", ["2007_000032", "bird_1", "猫", "a b", "COCO_val2014_000000000139"])
def test_safe_values_stay_as_they_are(value: str) -> None:
    assert is_safe_component(value) and safe_component(value) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_become_one_harmless_component(value: str) -> None:
    name = safe_component(value)
    assert is_safe_component(name), repr(name)
    assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    assert len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES
    assert safe_component(value) == name  # deterministic: a rerun writes the same names


def test_changed_values_never_collide() -> None:
    values = [*HOSTILE, "a_b", "x" * 301, "猫" * 101, "_._etc_passwd"]
    names = [safe_component(v) for v in values]
    assert len(set(names)) == len(values)
    assert safe_component("a/b") != safe_component("a_b") == "a_b"


def test_a_long_multibyte_value_is_cut_on_a_character_boundary() -> None:
    name = safe_component("猫" * 100)  # 300 bytes
    name.encode("utf-8").decode("utf-8")  # valid UTF-8
    assert name.startswith("猫" * 60) and len(name.encode()) <= MAX_COMPONENT_BYTES


def test_safe_join_stays_inside_the_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a", "b.png") == (tmp_path / "a" / "b.png").resolve()
    for parts in (["..", "x"], ["a", "..", "..", "x"], ["/etc/passwd"], ["."]):
        with pytest.raises(UnsafePathError, match="outside"):
            safe_join(tmp_path, *parts)


def test_safe_join_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "link")
    with pytest.raises(UnsafePathError):
        safe_join(root, "link", "x.png")


@pytest.mark.parametrize(
    ("value", "stem"),
    [
        ("../evil/id", "__evil_id"),
        ("a\\b:c", "a_b_c"),
        ("a b", "a_b"),
        ("..", "sample"),
        ("", "sample"),
        ("...x..y.", "_x_y"),
        ("ümlaut", "_mlaut"),
    ],
)
def test_plain_stem(value: str, stem: str) -> None:
    assert plain_stem(value) == stem
    assert len(plain_stem("x" * 500)) == 200 and plain_stem("///", fallback="f") == "f"
