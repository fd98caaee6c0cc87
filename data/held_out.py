"""Which reference-table facts are evaluation-only, the C64 question set built on them, and how an answer is scored.

The one home of the held-out rule. A row of a reference table (one KERNAL routine, one BASIC token, one opcode,
one memory-map label, one note, ...) is named by its generator group key (`kernal:$FFD2`, `basic:$99`,
`opcodes:$A9`, ...), which already is the table plus the row's key. A stable hash of that key puts
HELD_OUT_FRACTION of the rows aside for evaluation:

- the data build (data/build.py) never generates an SFT question-answer pair about a held-out row, and drops
  any generated example that states a held-out fact in passing (a KERNAL call sequence naming OPEN and its
  address, for instance);
- `./run.sh eval` (train/tools/evaluate.py) asks about held-out rows, and, labelled apart, about rows the SFT
  data trained;
- DAPT text keeps every fact: learning facts from documents is what DAPT is for.

Every question asks for one value (an address, a byte, a code, a register value). The score is an exact match
of the first value the final answer states that the question did not already state, after normalisation: `$D020`,
`0xD020`, `%1101000000100000` and `53280` are the same value (no question here asks for a particular base).
"""
from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass

from data import gen_basic, gen_keyboard, gen_kernal, gen_memory, gen_opcodes, gen_sid

HELD_OUT_FRACTION = 0.1
HELD_OUT_SALT = "c64-eval-v1"   # changing it draws another held-out set
ITEMS_PER_KIND = 10


def is_held_out(group: str) -> bool:
    """Whether the reference-table row with this group key is evaluation-only (stable across runs and tables)."""
    digest = hashlib.sha256(f"{HELD_OUT_SALT}\x00{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < HELD_OUT_FRACTION


# ------------------------------------------------------------------------------------------------ values

_VALUE = re.compile(r"\$([0-9A-Fa-f]+)|0x([0-9A-Fa-f]+)|%([01]{2,})|(?<![\w$#%])(?<!\d\.)(\d+)(?!\w|\.\d)")


def values_in(text: str) -> list[int]:
    """Every value the text states, in order: $hex, 0xhex, %binary and plain decimal numbers (digits inside a
    word, such as the 4 of C#4 or G4, and decimal fractions are not values)."""
    out = []
    for m in _VALUE.finditer(text):
        hex1, hex2, binary, dec = m.groups()
        out.append(int(hex1 or hex2, 16) if (hex1 or hex2) else int(binary, 2) if binary else int(dec))
    return out


def answer_value(answer: str, question: str) -> int | None:
    """The first value of the answer that the question did not state (the model may echo the question)."""
    given = set(values_in(question))
    return next((v for v in values_in(answer) if v not in given), None)


# ----------------------------------------------------------------------------------------- question set

@dataclass(frozen=True)
class Item:
    table: str
    kind: str
    group: str          # the row's group key: what is_held_out decides on
    question: str
    subject: str        # the name the question asks about (CHROUT, PRINT, TXTTAB, LDA #$nn, ...)
    expected: int
    reference: str | None = None    # the SFT generator's own answer to this question (None for the eval's own)

    def correct(self, answer: str | None) -> bool:
        return answer is not None and answer_value(answer, self.question) == self.expected

    def stated_in(self, text: str) -> bool:
        """Whether `text` states this fact: it names the subject and gives the expected value."""
        return self.expected in values_in(text) and self.names_subject(text)

    def names_subject(self, text: str) -> bool:
        return _subject_pattern(self.subject).search(text) is not None


@functools.lru_cache(maxsize=None)
def _subject_pattern(subject: str) -> re.Pattern:
    return re.compile(rf"(?<![\w$#]){re.escape(subject)}(?![\w])")


def _from_generator(module, kind: str, fact):
    """Items from an SFT generator kind: fact(tables, example) -> (subject, expected) or None to skip."""
    def items(tables, rng):
        for ex in getattr(module, kind)(tables, rng):
            found = fact(tables, ex)
            if found is not None:
                yield Item(module.TABLE, kind, ex.group, ex.question, *found, reference=ex.answer)
    return items


def _kernal_address(tables, ex):
    return ex.params["name"], gen_kernal.aliases(tables)[ex.params["name"]]["value"]


def _basic_token(tables, ex):
    return ex.params["keyword"], next(t["value"] for t in gen_basic.tokens(tables) if t["keyword"] == ex.params["keyword"])


def _basic_error(tables, ex):
    err = next(e for e in tables[gen_basic.TABLE]["errors"] if e["number"] == ex.params["number"])
    return err["message"].removesuffix(" ERROR"), err["number"]


def _memory_symbol(tables, ex):
    sym = ex.params["symbol"]
    entry = next(e for e in tables[gen_memory.TABLE]["entries"] if sym in (e.get("symbols") or []))
    return sym, entry["start"]


def _sid_value(tables, ex):
    note = next(n for n in gen_sid.notes(tables) if n["note"] == ex.params["note"])
    value = note[f"{ex.params['system']}_dec"]
    return (note["note"], value) if value is not None else None


def _petscii_code(tables, ex):
    code = next(c for c in tables[gen_keyboard.TABLE]["control_codes"] if c["value"] == ex.params["code"])
    return code["name"], code["value"]


def _opcode_questions(tables, rng):
    """Opcode bytes of documented instructions: the SFT kinds about opcodes answer several things at once, so
    this question is the eval's own. Cycle counts are not asked: the few small values (DEX takes 2) are stated
    in nearly every generated timing example, so holding one out would empty whole SFT kinds."""
    ops = [op for op in gen_opcodes.unique_syntax_ops(tables) if op["documented"] and op["mode_code"] != "r8"]
    rng.shuffle(ops)
    for op in ops:
        mode = f"`{op['syntax']}` ({op['addressing_mode']} mode)"
        yield Item(gen_opcodes.TABLE, "opcode_byte", f"opcodes:{op['opcode']}",
                   rng.choice((f"What is the opcode byte of {mode}?", f"Which byte does {mode} assemble to?")),
                   op["syntax"], op["value"])


KINDS = {
    ("kernal_api", "address_of"): _from_generator(gen_kernal, "address_of", _kernal_address),
    ("basic_tokens", "keyword_token"): _from_generator(gen_basic, "keyword_token", _basic_token),
    ("basic_tokens", "error_number"): _from_generator(gen_basic, "error_number", _basic_error),
    ("memory_map", "symbol_address"): _from_generator(gen_memory, "symbol_address", _memory_symbol),
    ("sid_note_frequencies", "note_to_value"): _from_generator(gen_sid, "note_to_value", _sid_value),
    ("keyboard_petscii", "control_code"): _from_generator(gen_keyboard, "control_code", _petscii_code),
    ("opcodes", "opcode_byte"): _opcode_questions,
}


def question_set(tables: dict, wanted=is_held_out, per_kind: int = ITEMS_PER_KIND) -> list[Item]:
    """Up to `per_kind` items per kind, one per row, about rows for which wanted(group) holds. A question that
    states its own answer (`Which message is error 27?` asks the other way round) is never chosen."""
    out: list[Item] = []
    for (table, kind), make in KINDS.items():
        if table not in tables:
            continue
        rng = random.Random(f"eval:{table}:{kind}")
        seen: set[str] = set()
        for item in make(tables, rng):
            if item.kind != kind or item.group in seen or not wanted(item.group):
                continue
            if item.expected in values_in(item.question):
                continue
            seen.add(item.group)
            out.append(item)
            if len(seen) >= per_kind:
                break
    return out


def held_out_facts(tables: dict) -> list[Item]:
    """Every held-out fact the question set could ask about (no cap): what the data build keeps out of SFT."""
    return question_set(tables, is_held_out, per_kind=10 ** 6)


def leaks(text: str, facts: list[Item]) -> bool:
    """Whether `text` states any of `facts` (the data build's filter for generated SFT examples)."""
    values = set(values_in(text))
    return any(f.names_subject(text) for f in facts if f.expected in values)
