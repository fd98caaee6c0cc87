"""The JSON reference tables (derived from mist64/c64ref): loading, lookups and shared helpers.

They are the single source of truth for generated SFT answers, so the helpers here only restate
what the tables say (plus a few fixed hardware facts, such as where each chip is mapped, named below).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

TABLE_NAMES = ("opcodes", "memory_map", "io_registers", "kernal_api", "basic_tokens",
               "sid_note_frequencies", "keyboard_petscii")

# The key each table must have; a file with a known name but another shape is not ours.
_SHAPE_KEYS = {"opcodes": "opcodes", "memory_map": "entries", "io_registers": "entries",
               "kernal_api": "entries", "basic_tokens": "tokens", "sid_note_frequencies": "notes_table",
               "keyboard_petscii": "keys"}


def is_reference_table(name: str, data) -> bool:
    key = _SHAPE_KEYS.get(name)
    return key is not None and isinstance(data, dict) and isinstance(data.get(key), list)


def load_tables(reference_dir: Path) -> tuple[dict[str, dict], list[tuple[Path, str, str]]]:
    """(tables by name, problems as (path, reason, detail)) for the known tables in reference_dir."""
    tables, problems = {}, []
    for name in TABLE_NAMES:
        path = reference_dir / f"{name}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append((path, "bad_json", str(e)))
            continue
        if not is_reference_table(name, data):
            problems.append((path, "unsupported_json_shape", f"expected a '{_SHAPE_KEYS[name]}' list"))
            continue
        tables[name] = data
    return tables, problems


# --- number formatting ----------------------------------------------------------------------------

def h2(v: int) -> str:
    return f"${v:02X}"


def h4(v: int) -> str:
    return f"${v:04X}"


def b8(v: int) -> str:
    return f"%{v:08b}"


def parse_hex(s: str) -> int:
    return int(s.lstrip("$"), 16)


# --- fixed hardware facts -------------------------------------------------------------------------
# Where each I/O chip sits and how often its registers repeat (the tables list the "register images"
# ranges; the period is the number of registers the chip decodes).

@dataclass(frozen=True)
class Chip:
    name: str
    start: int
    end: int
    mirror: int | None      # registers repeat every `mirror` bytes inside [start, end]


CHIPS = (
    Chip("VIC-II", 0xD000, 0xD3FF, 0x40),
    Chip("SID", 0xD400, 0xD7FF, 0x20),
    Chip("Colour RAM", 0xD800, 0xDBFF, None),
    Chip("CIA 1", 0xDC00, 0xDCFF, 0x10),
    Chip("CIA 2", 0xDD00, 0xDDFF, 0x10),
    Chip("I/O 1 (expansion port)", 0xDE00, 0xDEFF, None),
    Chip("I/O 2 (expansion port)", 0xDF00, 0xDFFF, None),
)


def chip_for(address: int) -> Chip | None:
    return next((c for c in CHIPS if c.start <= address <= c.end), None)


# --- register bit layouts -------------------------------------------------------------------------

_BIT_LINE = re.compile(r"^(\d)(?:\s*-\s*(\d))?\s{2,}(\S.*)$")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class BitField:
    lo: int
    hi: int
    text: str

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    def label(self) -> str:
        return f"bit {self.lo}" if self.lo == self.hi else f"bits {self.hi}-{self.lo}"

    def value_of(self, byte: int) -> int:
        return (byte >> self.lo) & ((1 << self.width) - 1)


def parse_bit_layout(text: str | None) -> list[BitField]:
    """Fields from lines like '0-2  Fine scroll ...' or '7    Raster Compare ...' (first block only).

    Lines that follow a bit line without a bit number of their own continue its description."""
    fields: list[list] = []
    for line in (text or "").split("\n"):
        if not line.strip():
            if fields:
                break
            continue
        m = _BIT_LINE.match(line)
        if m:
            a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            fields.append([min(a, b), max(a, b), m.group(3)])
        elif fields:
            fields[-1][2] += " " + line.strip()
        else:
            break
    return [BitField(lo, hi, _WS.sub(" ", t).strip()) for lo, hi, t in fields if hi <= 7]


def is_partition(fields: list[BitField]) -> bool:
    bits = [b for f in fields for b in range(f.lo, f.hi + 1)]
    return sorted(bits) == list(range(8))


SOURCE_TITLES = {"prg": "the Programmer's Reference Guide", "mapc64": "Mapping the Commodore 64",
                 "sta": "Joe Forster/STA's map", "src": "the original ROM source", "jb": "Jim Butterfield's map",
                 "64map": "64MAP", "dh": "Dan Heeb's Tool Kit", "mlr": "Machine Language Routines",
                 "pm": "Cracking The Kernal", "ct": "Craig Taylor's Kernal 64/128", "fk": "Frank Kontros' table",
                 "ld": "the KERNAL documentation"}


def register_layout(entry: dict) -> tuple[str, list[BitField]] | None:
    """The bit layout used for an I/O register: the Programmer's Reference Guide when it covers all
    eight bits exactly once, otherwise Mapping the Commodore 64 under the same rule."""
    parsed = {d["source"]: parse_bit_layout(d.get("text")) for d in entry.get("descriptions", [])}
    for source in ("prg", "mapc64"):
        fields = parsed.get(source)
        if fields and is_partition(fields):
            return source, sorted(fields, key=lambda f: f.lo)
    return None


def entry_heading(entry: dict, prefer=("prg", "mapc64", "sta", "jb", "64map", "src")) -> tuple[str, str] | None:
    """(source, heading) of the first non-empty heading in preference order."""
    by_source = {d["source"]: (d.get("heading") or "").strip() for d in entry.get("descriptions", [])}
    for source in prefer:
        if by_source.get(source):
            return source, by_source[source]
    for source, heading in by_source.items():
        if heading:
            return source, heading
    return None


SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]{1,8}$")


def clean_symbols(entry: dict) -> list[str]:
    return [s for s in entry.get("symbols") or [] if SYMBOL.match(s)]
