"""File names built from manifest values, made safe: nothing difaug writes can land outside its folder.

Manifest values (sample ids, class names, image stems) are user data. A sample id of `../../etc/x`,
a class name with a `/` or a NUL, or a 300-character id must neither escape the export folder nor
crash the export half way. Two layers guard this:

1. `safe_component` turns one value into one harmless path component, deterministically, and
   appends a short hash of the original whenever it had to change or shorten it, so two different
   values never collapse onto the same name (`a/b` and `a_b` stay distinct).
2. `safe_join` resolves the final path and checks it is inside the root (this also catches a
   symlink planted inside the root that points elsewhere).

`plain_stem` is the stricter, shorter rule of `difaug conditions`' preview files (ASCII letters,
digits, `._-` only; no hash: collisions are resolved by the caller, `conditions.preview.output_names`).
It is kept apart from `safe_component` because merging them would rename existing preview files
(`a b` → `a_b` there, unchanged here).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from difaug.core.errors import DifaugError
from difaug.core.text import INVISIBLE

# Most filesystems allow 255 bytes per component; leave room for the `_{class_id}_{k}.jpg` tail.
MAX_COMPONENT_BYTES = 200
_HASH_LEN = 8
# Path separators of every OS, NUL and other control characters, characters Windows refuses, and
# invisible / direction-changing marks (an RTL override makes `gpj.exe` show as `exe.jpg`).
_UNSAFE = re.compile(r'[/\\<>:"|?*]|' + INVISIBLE.pattern)
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9._-]+")


class UnsafePathError(DifaugError, ValueError):
    """A computed output path would fall outside the export folder."""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


def _truncate_utf8(value: str, max_bytes: int) -> str:
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return value
    # Cut on a character boundary, never in the middle of a multi-byte sequence.
    return raw[:max_bytes].decode("utf-8", "ignore")


def is_safe_component(value: str, max_bytes: int = MAX_COMPONENT_BYTES) -> bool:
    """True when `value` can be used verbatim as one path component."""
    return (
        value != ""
        and not value.startswith(".")  # "..", ".", and hidden files nobody would look for
        and not _UNSAFE.search(value)
        and not value.endswith((" ", "."))  # Windows silently strips these: two names, one file
        and len(value.encode("utf-8", "surrogatepass")) <= max_bytes
    )


def safe_component(value: str, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """One path component from a manifest value: unchanged if already safe, else cleaned + hash suffix.

    >>> safe_component("2007_000032")
    '2007_000032'
    >>> safe_component("../x")  # doctest: +ELLIPSIS
    '___x-...'
    """
    if is_safe_component(value, max_bytes):
        return value
    cleaned = _UNSAFE.sub("_", value).rstrip(" .")
    cleaned = "_" * (len(cleaned) - len(cleaned.lstrip("."))) + cleaned.lstrip(".") or "_"
    suffix = "-" + _digest(value)
    return _truncate_utf8(cleaned, max_bytes - len(suffix)) + suffix


def safe_join(root: str | os.PathLike[str], *parts: str) -> Path:
    """`root/part/…`, refusing any result that resolves outside `root`.

    The parts should already be `safe_component`s; this is the second, independent check."""
    base = Path(root).resolve()
    target = base.joinpath(*parts)
    resolved = target.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise UnsafePathError(f"refusing to write {target}: it resolves to {resolved}, outside {base}")
    return resolved


def plain_stem(value: str, fallback: str = "sample") -> str:
    """A plain ASCII file stem: runs of anything but `A-Za-z0-9._-` → `_`, no `..`, no leading or
    trailing dot or space, at most 200 characters, never empty (`fallback`)."""
    stem = _NOT_PLAIN.sub("_", value)
    stem = re.sub(r"\.{2,}", "_", stem).strip(". ")[:200]
    return stem if stem.strip("_") else fallback
