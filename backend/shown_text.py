"""Text from outside (photo names, EXIF, place names, received files) made safe to show: every
character that would act rather than show is written out. No imports beyond the standard library, so
the plugin can use it before the engine's packages are installed."""

from __future__ import annotations

import re

# Characters that act instead of showing: C0/C1 controls but tab and newline (terminal escape sequences
# start with ESC), bidirectional overrides (a name that reads backwards), and lone surrogates.
_ACTING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible_text(value) -> str:
    """Text from outside (photo names, EXIF, place names) with every character that would act rather
    than show (ESC, other controls, bidi overrides) written out as ``\\x1b`` / ``\\u202e``."""
    text = "" if value is None else str(value)
    return _ACTING.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def printable(text: str) -> str:
    """Text as the terminal may show it: control characters (newlines, escape sequences) and bytes that
    are not UTF-8 written as escapes, so a file name cannot fake, hide or garble lines."""
    shown = []
    for char in str(text):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by Python as a surrogate escape
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            shown.append(char)
        else:
            shown.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(shown)
