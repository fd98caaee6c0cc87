"""Turn raw file bytes into text, or say precisely why not (binary, not UTF-8, empty).

Decoding is strict: a wrong guess at a legacy code page would put mojibake into training data, so a
file that is not UTF-8 is left out with the line and byte offset of the first bad byte.
"""
from __future__ import annotations

from dataclasses import dataclass

from data import rejections as R

_SNIFF = 8192
_TEXT_CONTROLS = {9, 10, 12, 13}     # tab, newline, form feed, carriage return


@dataclass(frozen=True)
class Decoded:
    text: str | None
    reason: str | None = None
    line: int | None = None
    detail: str = ""


def looks_binary(data: bytes) -> bool:
    head = data[:_SNIFF]
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    return controls / len(head) > 0.10


def decode_text(data: bytes) -> Decoded:
    if not data.strip():
        return Decoded(None, R.EMPTY_FILE, None, "the file is empty or only whitespace")
    if looks_binary(data):
        return Decoded(None, R.BINARY_FILE, None, "NUL or many control bytes: not a text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return Decoded(None, R.NOT_UTF8, line,
                       f"byte 0x{data[e.start]:02X} at offset {e.start} is not valid UTF-8; "
                       "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    if text.startswith("\ufeff"):
        text = text[1:]
    return Decoded(text)
