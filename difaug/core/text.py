"""Text from manifests made safe to draw, print or embed: one sanitiser for the whole package.

Class names, sample ids and prompts are user data. A newline breaks a one-line caption (PIL's
`textlength` refuses multi-line text), a control character or an ANSI escape rewrites the terminal,
a right-to-left override mark (U+202E) makes `gpj.exe` read as `exe.jpg`, and a 10 000-character id
pushes everything else off the sheet. `display_text` turns any such value into one short, visible
line; the original stays untouched in the data (Parquet, summary JSON), only what is *shown* changes.
File names have their own rules (`difaug.core.names`), which use `INVISIBLE` from here.
"""

from __future__ import annotations

import re
import unicodedata

# Characters that must never reach a caption, a terminal or a file name as themselves: C0/C1
# controls (newline, tab, ESC, NUL…), and Unicode format characters — bidi overrides and isolates
# (U+202A–U+202E, U+2066–U+2069), LRM/RLM, zero-width joiners, BOM — plus the line and paragraph
# separators U+2028/U+2029.
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

DEFAULT_MAX_CHARS = 80


def _visible(ch: str) -> str:
    if ch in "\n\r\t":
        return " "
    return f"<U+{ord(ch):04X}>"


def display_text(value: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """`value` as one line of at most `max_chars` visible characters.

    Whitespace controls (newline, tab) become spaces; every other invisible or direction-changing
    character becomes a visible `<U+XXXX>` tag, so a label shows that something odd is there instead
    of hiding it; any other Unicode format character (category Cf) is tagged too. Longer text is cut
    and ends with "…"."""
    text = str(value)
    text = INVISIBLE.sub(lambda m: _visible(m.group()), text)
    if any(unicodedata.category(ch) in ("Cf", "Cs", "Co") for ch in text):
        text = "".join(
            f"<U+{ord(ch):04X}>" if unicodedata.category(ch) in ("Cf", "Cs", "Co") else ch for ch in text
        )
    if max_chars > 0 and len(text) > max_chars:
        text = text[: max(0, max_chars - 1)] + "…"
    return text


def ascii_text(value: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """`display_text`, then non-ASCII as `?`: for OpenCV's Hershey fonts, which draw ASCII only."""
    return display_text(value, max_chars).encode("ascii", "replace").decode("ascii")
