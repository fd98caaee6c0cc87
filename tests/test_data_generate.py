"""Generated SFT conversations: every answer checked against the JSON tables it came from.

Each check below recomputes the expected value straight from the shipped reference tables
(data/raw/reference), without the generator's helpers, and looks for it in the answer text.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from contract.reasoning import validate_text
from data.sft_generate import _pool, available_kinds, generate

REF = Path(__file__).resolve().parent.parent / "data" / "raw" / "reference"
PER_KIND = 25


@pytest.fixture(scope="module")
def tables():
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in REF.glob("*.json")}


@pytest.fixture(scope="module")
def samples(tables):
    return {(t, k): _pool(fn, tables, 7, t, k, PER_KIND) for t, k, fn in available_kinds(tables)}


def hx(v, w=2):
    return f"${v:0{w}X}"


def op_by_value(tables, v):
    return next(o for o in tables["opcodes"]["opcodes"] if o["value"] == v)


def syntax_of(text: str) -> str:
    """'LDA $D020,X' -> 'LDA $nnnn,X' (the table's syntax column)."""
    text = re.sub(r"#\$[0-9A-F]{2}\b", "#$nn", text)
    text = re.sub(r"\$[0-9A-F]{4}\b", "$nnnn", text)
    return re.sub(r"\$[0-9A-F]{2}\b", "$nn", text)


def operand_bytes(text: str) -> list[int]:
    m = re.search(r"\$([0-9A-F]{4}|[0-9A-F]{2})\b", text)
    if not m:
        return []
    v = int(m.group(1), 16)
    return [v & 0xFF, v >> 8] if len(m.group(1)) == 4 else [v]


# --- one checker per question kind ---------------------------------------------------------------

def check_opcodes(kind, p, a, T):
    ops = T["opcodes"]["opcodes"]
    if kind in ("decode", "undocumented"):
        op = op_by_value(T, p["opcode"])
        assert op["syntax"] in a
        if op["cycles"] is not None:
            assert f"{op['cycles']} cycles" in a and f"{op['bytes']} byte" in a
        if kind == "undocumented":
            assert not op["documented"]
    elif kind == "encode":
        op = op_by_value(T, p["opcode"])
        if "at" in p:
            off = (p["target"] - (p["at"] + 2)) & 0xFF
            assert -128 <= p["target"] - (p["at"] + 2) <= 127
            assert f"{op['value']:02X} {off:02X}" in a
        else:
            assert syntax_of(p["text"]) == op["syntax"]
            want = " ".join(f"{b:02X}" for b in [op["value"]] + operand_bytes(p["text"]))
            assert f"assembles to {want} " in a
    elif kind == "cycles_indexed":
        op = op_by_value(T, p["opcode"])
        ea = (p["base"] + p["index"]) & 0xFFFF
        crossed = (ea >> 8) != (p["base"] >> 8)
        want = op["cycles"] + (1 if crossed and op["cycles_raw"].endswith("+p") else 0)
        assert a.startswith(f"{want} cycles") and hx(ea, 4) in a
    elif kind == "zero_page_wrap":
        op = op_by_value(T, p["opcode"])
        eff = (p["zp"] + p["index"]) % 256
        assert hx(eff) in a and f"{op['cycles']} cycles" in a
    elif kind == "branch":
        op = op_by_value(T, p["opcode"])
        flag, want = re.match(r"Branch on (\w) = (\d)", op["operation"]).groups()
        taken = p["state"] == int(want)
        nxt = p["at"] + 2
        target = (nxt + (p["offset"] - 256 if p["offset"] > 127 else p["offset"])) & 0xFFFF
        if taken:
            cycles = 3 + ((nxt >> 8) != (target >> 8))
            assert hx(target, 4) in a and f"{cycles} cycles" in a
        else:
            assert hx(nxt, 4) in a and "2 cycles" in a
    elif kind == "flags":
        op = next(o for o in ops if o["mnemonic"] == p["mnemonic"] and o["documented"])
        letters = dict(zip("NV-BDIZC", op["flags_string"]))
        changed = [f for f, c in letters.items() if f != "-" and c not in "-"]
        if not changed:
            assert "changes no flags" in a
        for f in changed:
            assert f"({f})" in a
    elif kind == "sequence_cycles":
        chosen = [op_by_value(T, v) for v in p["opcodes"]]
        assert [syntax_of(line) for line in p["lines"]] == [o["syntax"] for o in chosen]
        assert a == f"{sum(o['bytes'] for o in chosen)} bytes, {sum(o['cycles'] for o in chosen)} cycles."
    elif kind == "loop_cycles":
        by_syntax = {o["syntax"]: o for o in ops if o["documented"]}
        body = sum(op_by_value(T, v)["cycles"] for v in p["body"])
        n = p["count"]
        ldx, dex, bne = by_syntax["LDX #$nn"]["cycles"], by_syntax["DEX"]["cycles"], by_syntax["BNE $nnnn"]["cycles"]
        total = ldx + n * (body + dex) + (n - 1) * (bne + 1) + bne
        assert a == f"{total} cycles."
    else:
        raise AssertionError(kind)


def check_memory_map(kind, p, a, T):
    entries = T["memory_map"]["entries"]
    if kind == "location":
        hits = [e for e in entries if e["start"] <= p["address"] <= e["end"] and any(
            (d.get("heading") or "").strip() for d in e["descriptions"])]
        e = min(hits, key=lambda e: (e["end"] - e["start"], e["start"]))
        span = hx(e["start"], 4) if e["start"] == e["end"] else f"{hx(e['start'], 4)}-{hx(e['end'], 4)}"
        assert span in a and hx(p["address"], 4) in a
    elif kind == "symbol_address":
        owners = [e for e in entries if p["symbol"] in (e.get("symbols") or [])]
        assert len(owners) == 1
        assert hx(owners[0]["start"], 4) in a
    elif kind == "pointer_value":
        v = p["lo"] + 256 * p["hi"]
        assert a.endswith(f"= {hx(v, 4)} ({v}).")
        assert any(e["start"] == p["start"] and p["symbol"] in e["symbols"] for e in entries)


CHIP_PERIODS = [(0xD000, 0xD3FF, 0x40), (0xD400, 0xD7FF, 0x20), (0xDC00, 0xDCFF, 0x10), (0xDD00, 0xDDFF, 0x10)]


def io_entry(T, addr):
    return next(e for e in T["io_registers"]["entries"] if e["start"] == e["end"] == addr)


def check_io_registers(kind, p, a, T):
    if kind == "register_lookup":
        addr = p["address"]
        real = addr
        for lo, hi, period in CHIP_PERIODS:
            if lo <= addr <= hi:
                real = lo + (addr - lo) % period
        assert real == p["register"]
        e = io_entry(T, real)
        assert hx(real, 4) in a and e["symbols"][0] in a
    elif kind == "bit_meaning":
        e = io_entry(T, p["register"])
        lo, hi = p["lo"], p["hi"]
        labels = {f"{lo}", f"{hi}-{lo}", f"{lo}-{hi}"}
        field_text = " ".join(a.split(": ", 1)[1].split())
        found = False
        for d in e["descriptions"]:
            for line in (d.get("text") or "").split("\n"):
                m = re.match(r"(\d(?:\s*-\s*\d)?)\s{2,}(.*)", line)
                if m and m.group(1).replace(" ", "") in labels:
                    found |= field_text.startswith(" ".join(m.group(2).split()))
        assert found
    elif kind == "value_decode":
        v = p["value"]
        assert f"{hx(v)} = %{v:08b}" in a
        fields = re.findall(r"bits? (\d)(?:-(\d))? = (\d+)", a)
        assert sum((int(h) - int(l or h) + 1) if l else 1 for h, l, _ in fields) == 8
        for h, l, val in fields:
            hi_, lo_ = int(h), int(l) if l else int(h)
            assert (v >> lo_) & ((1 << (hi_ - lo_ + 1)) - 1) == int(val)
    elif kind == "value_compose":
        v = sum(1 << b for b in p["bits"])
        assert a.startswith(f"{hx(v)} ({v})") and f"POKE {p['register']},{v}" in a
    elif kind == "bit_mask_code":
        mask = 1 << p["bit"]
        want = f"ORA #{hx(mask)}" if p["set"] else f"AND #{hx(0xFF ^ mask)}"
        assert want in a and f"STA {hx(p['register'], 4)}" in a


def kernal(T, name):
    table = [e for e in T["kernal_api"]["entries"] if e["value"] >= 0xFF81 and e.get("names")]
    primary = [e for e in table if e["names"][0] == name]
    if primary:
        return primary[0]
    (only,) = [e for e in table if name in e["names"]]      # an alternative name must be unambiguous
    return only


def expand(T, e, seen):
    out = []
    raw = (e.get("quick") or {}).get("preparatory_routines") or ""
    if raw.strip() and not raw.startswith("*") and raw.strip().lower() != "none":
        for part in re.split(r",", raw.strip("()")):
            name = part.strip(" []()")
            if name and name not in seen:
                dep = kernal(T, name)
                if dep["names"][0] not in seen:
                    out += expand(T, dep, seen)
    if e["names"][0] not in seen:
        seen.add(e["names"][0])
        out.append(e["names"][0])
    return out


def check_kernal_api(kind, p, a, T):
    if kind == "address_of":
        assert f"JSR {kernal(T, p['name'])['address']}" in a
    elif kind == "name_of":
        e = next(x for x in T["kernal_api"]["entries"] if x["value"] == p["address"])
        assert a.startswith(e["names"][0])
    elif kind == "registers":
        q = kernal(T, p["name"])["quick"]
        if q.get("input") and q["input"] != "–":
            assert q["input"] in a
    elif kind == "sequence":
        order = expand(T, kernal(T, p["name"]), set())
        assert re.findall(r"(\w+) \(\$[0-9A-F]{4}\)", a) == order
    elif kind == "errors_stack":
        q = kernal(T, p["name"])["quick"]
        err = q.get("error_returns")
        if err and not err.startswith("*"):
            assert err in a
    elif kind == "vector":
        vec, target = re.match(r"\(\$(\w{4})\), \$(\w{4})", kernal(T, p["name"])["quick"]["real_address"]).groups()
        assert f"(${vec})" in a and f"to ${target}" in a


def crunch(line: str, T) -> list[int]:
    """Independent BASIC V2 tokenizer: greedy keyword match in token order outside quotes/REM/DATA."""
    kws = sorted(((t["keyword"], t["value"]) for t in T["basic_tokens"]["tokens"]), key=lambda kv: kv[1])
    out, i, quote, data = [], 0, False, False
    while i < len(line):
        c = line[i]
        if c == '"':
            quote = not quote
        if quote or c == '"' or c == " " or c.isdigit() or c in ":;" or (data and c != ":"):
            data = data and c != ":"
            out.append(ord(c))
            i += 1
            continue
        if c == "?":
            out.append(0x99)
            i += 1
            continue
        hit = next(((k, v) for k, v in kws if line.startswith(k, i)), None)
        if hit is None:
            out.append(ord(c))
            i += 1
            continue
        out.append(hit[1])
        i += len(hit[0])
        if hit[0] == "REM":
            out += [ord(ch) for ch in line[i:]]
            break
        data = hit[0] == "DATA"
    return out


def check_basic_tokens(kind, p, a, T):
    toks = T["basic_tokens"]["tokens"]
    if kind == "keyword_token":
        t = next(t for t in toks if t["keyword"] == p["keyword"])
        assert f"token {t['token']} ({t['value']})" in a
    elif kind == "token_keyword":
        t = next(t for t in toks if t["value"] == p["token"])
        assert a.endswith(f"is {t['keyword']}.")
    elif kind == "tokenise_line":
        n = p["number"]
        stored = [n & 0xFF, n >> 8] + crunch(p["body"], T) + [0]
        assert " ".join(f"{b:02X}" for b in stored) in a
        if p["first_line"]:
            link = 0x0801 + 2 + len(stored)
            assert a.startswith(f"link {link & 0xFF:02X} {link >> 8:02X}")
    elif kind == "error_number":
        err = next(e for e in T["basic_tokens"]["errors"] if e["number"] == p["number"])
        assert err["message"] in a and f"Error {err['number']} " in a
    elif kind == "dispatch":
        t = next(t for t in toks if t["keyword"] == p["keyword"])
        assert hx(int(t["handler"][1:], 16) - 1, 4) in a


def check_sid_note_frequencies(kind, p, a, T):
    table = T["sid_note_frequencies"]
    clock = table["clock_hz"]
    notes = {n["note"]: n for n in table["notes_table"]}
    if kind == "note_to_value":
        n = notes[p["note"]]
        v = round(440 * 2 ** ((n["midi"] - 69) / 12) * 2 ** 24 / clock[p["system"]])
        if n[p["system"] + "_dec"] is None:
            assert v > 0xFFFF and "does not fit" in a
        else:
            assert v == n[p["system"] + "_dec"]
            reg = 0xD400 + 7 * (p["voice"] - 1)
            assert f"POKE {reg},{v & 0xFF}:POKE {reg + 1},{v >> 8}" in a
    elif kind == "value_to_hz":
        hz = p["value"] * clock[p["system"]] / 2 ** 24
        near = min(notes.values(), key=lambda n: abs(n["frequency_hz"] - hz))
        assert f"{hz:.2f} Hz" in a and near["note"] in a
    elif kind == "pal_to_ntsc":
        assert notes[p["note"]][p["to"]] in a


def check_keyboard_petscii(kind, p, a, T):
    data = T["keyboard_petscii"]
    if kind in ("key_scan", "scancode"):
        k = next(k for k in data["keys"] if k["scancode"] == p["scancode"])
        assert k["scancode"] == 8 * k["cia1_pa_bit"] + k["cia1_pb_bit"]
        if kind == "key_scan":
            assert f"LDA #{hx(255 - (1 << k['cia1_pa_bit']))} / STA $DC00" in a
            assert f"AND #{hx(1 << k['cia1_pb_bit'])}" in a
        else:
            assert a.startswith(f"{k['scancode']} ")
    elif kind == "petscii":
        k = next(k for k in data["keys"] if k["scancode"] == p["scancode"])
        code = k[p["modifier"]]
        assert f"PETSCII {code} ({int(code[1:], 16)})" in a
    elif kind == "control_code":
        c = next(c for c in data["control_codes"] if c["value"] == p["code"])
        assert f"CHR$({c['value']})" in a and c["name"] in a
    elif kind == "palette":
        col = data["palette"][p["index"]]
        assert col["index"] == p["index"] and col["name"] in a and col["rgb"] in a


CHECKERS = {"opcodes": check_opcodes, "memory_map": check_memory_map, "io_registers": check_io_registers,
            "kernal_api": check_kernal_api, "basic_tokens": check_basic_tokens,
            "sid_note_frequencies": check_sid_note_frequencies, "keyboard_petscii": check_keyboard_petscii}


def test_every_table_and_kind_produces_examples(samples):
    assert {t for t, _ in samples} == set(CHECKERS)
    assert all(len(v) > 0 for v in samples.values())


def test_answers_agree_with_the_tables(samples, tables):
    checked = Counter()
    for (table, kind), examples in samples.items():
        for ex in examples:
            try:
                CHECKERS[table](kind, ex.params, ex.answer, tables)
            except AssertionError as e:
                raise AssertionError(f"{table}/{kind}: {ex.params}\nQ: {ex.question}\nA: {ex.answer}") from e
            checked[table, kind] += 1
    assert len(checked) == len(samples)


def test_every_turn_satisfies_the_reasoning_contract(samples):
    for examples in samples.values():
        for ex in examples:
            verdict = validate_text(f"[THINK]{ex.reasoning}[/THINK]{ex.answer}")
            assert verdict.ok, (ex.kind, verdict.codes)
            assert 0 < len(ex.reasoning.split()) < 200 and len(ex.answer.split()) < 80


def test_generation_is_deterministic_balanced_and_capped(tables):
    one = generate(tables, 350, seed=3)
    two = generate(tables, 350, seed=3)
    assert [(e.question, e.reasoning, e.answer) for e in one] == [(e.question, e.reasoning, e.answer) for e in two]
    assert len(one) == 350
    per_table = Counter(e.table for e in one)
    assert max(per_table.values()) - min(per_table.values()) <= 1
    assert len({e.kind for e in one}) == sum(1 for _ in available_kinds(tables))
    assert [e.question for e in generate(tables, 350, seed=4)] != [e.question for e in one]
    assert generate(tables, 0, seed=3) == []


def test_questions_and_reasoning_are_distinct(tables):
    exs = generate(tables, 700, seed=0)
    assert len({e.question for e in exs}) == len(exs)
    assert len({" ".join(e.reasoning.lower().split()) for e in exs}) == len(exs)


def test_missing_tables_only_drop_their_kinds(tables):
    only = {"opcodes": tables["opcodes"]}
    exs = generate(only, 50, seed=0)
    assert len(exs) == 50 and {e.table for e in exs} == {"opcodes"}
