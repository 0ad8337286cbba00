"""`difaug.core.text.display_text`: manifest text as one short visible line."""

from __future__ import annotations

from difaug.core.names import safe_component
from difaug.core.text import ascii_text, display_text


def test_display_text_one_visible_line() -> None:
    assert display_text("plain cat") == "plain cat"
    assert display_text("a\nb\tc\r") == "a b c "
    assert display_text("x\x1b[31my") == "x<U+001B>[31my"
    assert display_text("evil\u202egpj.exe") == "evil<U+202E>gpj.exe"
    assert display_text("zero\u200bwidth\ufeff") == "zero<U+200B>width<U+FEFF>"
    assert display_text("line\u2028sep") == "line<U+2028>sep"
    assert display_text("猫 ümlaut") == "猫 ümlaut"
    long = display_text("x" * 500, 40)
    assert len(long) == 40 and long.endswith("…")
    assert ascii_text("猫\n", 10) == "? "


def test_file_names_never_keep_direction_marks() -> None:
    name = safe_component("photo\u202egpj.exe")
    assert "\u202e" not in name and name.startswith("photo_gpj.exe-")
