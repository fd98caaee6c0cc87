"""How BASIC V2 stores a typed program line (the ROM's CRUNCH routine), driven by basic_tokens.json.

Rules of the ROM routine, in the order it applies them to each character:
- a space is stored as it is;
- a quote starts a string that is copied unchanged up to the closing quote;
- after DATA, characters are copied unchanged until the next colon;
- "?" becomes the PRINT token;
- digits, ":" and ";" are copied without a keyword search;
- otherwise the keywords are tried in token order ($80 upwards) and the first one that matches the
  text at this position wins (so "SCORE" hides OR and "TOTAL" starts with TO); no match copies one char;
- after REM the rest of the line is copied unchanged.
Lines are plain upper-case ASCII here, which equals unshifted PETSCII for these characters.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    text: str          # the characters of the typed line this piece came from
    byte: int          # the stored byte
    token: bool        # True when it is a keyword token


def keyword_table(tables) -> list[tuple[str, int]]:
    return [(t["keyword"], t["value"]) for t in sorted(tables["basic_tokens"]["tokens"], key=lambda t: t["value"])]


def crunch(text: str, keywords: list[tuple[str, int]]) -> list[Piece]:
    by_name = dict(keywords)
    out: list[Piece] = []
    i, data_mode = 0, False
    while i < len(text):
        ch = text[i]
        if ch == '"':
            j = text.find('"', i + 1)
            j = len(text) if j < 0 else j + 1
            out += [Piece(c, ord(c), False) for c in text[i:j]]
            i = j
            continue
        if ch == " " or data_mode or "0" <= ch <= ";":
            if ch == ":":
                data_mode = False
            out.append(Piece(ch, ord(ch), False))
            i += 1
            continue
        if ch == "?":
            out.append(Piece("?", by_name["PRINT"], True))
            i += 1
            continue
        match = next(((kw, v) for kw, v in keywords if text.startswith(kw, i)), None)
        if match is None:
            out.append(Piece(ch, ord(ch), False))
            i += 1
            continue
        kw, value = match
        out.append(Piece(kw, value, True))
        i += len(kw)
        if kw == "REM":
            out += [Piece(c, ord(c), False) for c in text[i:]]
            break
        if kw == "DATA":
            data_mode = True
    return out


def line_bytes(number: int, body: str, keywords) -> tuple[list[int], list[Piece]]:
    """Stored form without the link pointer: line number (low, high), crunched body, $00."""
    pieces = crunch(body.lstrip(" "), keywords)
    return [number & 0xFF, number >> 8] + [p.byte for p in pieces] + [0], pieces
