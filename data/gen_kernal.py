"""SFT questions about the KERNAL jump table ($FF81-$FFF3), from kernal_api.json."""
from __future__ import annotations

import re

from data.reference_tables import h2, h4
from data.sft_example import Example, join_sentences, listing, pick

TABLE = "kernal_api"
JUMP_TABLE_START = 0xFF81
_VECTOR = re.compile(r"^\(\$([0-9A-F]{4})\),\s*\$([0-9A-F]{4})$")


def clean(value) -> str | None:
    """A quick-reference field, or None when it is missing or a parsing leftover ('* ...', '**...')."""
    if not isinstance(value, str):
        return None
    v = value.strip()
    if not v or v.startswith("*"):
        return None
    return v


def routines(tables) -> list[dict]:
    return [e for e in tables[TABLE]["entries"] if e["value"] >= JUMP_TABLE_START and e.get("names")]


def aliases(tables) -> dict[str, dict]:
    """Name -> routine. A primary name (the first) always wins; an alternative name only counts when
    no other routine uses it (the table lists MEMTOP and MEMBOT under both $FF99 and $FF9C)."""
    entries = routines(tables)
    uses: dict[str, int] = {}
    for e in entries:
        for n in e["names"]:
            uses[n] = uses.get(n, 0) + 1
    out = {e["names"][0]: e for e in entries}
    for e in entries:
        for n in e["names"][1:]:
            if uses[n] == 1:
                out.setdefault(n, e)
    return out


def prep_list(e: dict) -> list[tuple[str, bool]]:
    """[(name, optional)] from 'SETLFS, SETNAM', '(CHKOUT,OPEN)' or 'LISTEN, [SECOND]'."""
    raw = clean((e.get("quick") or {}).get("preparatory_routines"))
    if not raw or raw.lower() == "none":
        return []
    whole_optional = raw.startswith("(") and raw.endswith(")")
    out = []
    for part in raw.strip("()").split(","):
        part = part.strip()
        optional = whole_optional or (part.startswith("[") and part.endswith("]")) or part.startswith("(")
        name = part.strip("[]() ")
        if name:
            out.append((name, optional))
    return out


def call_sequence(tables, e: dict) -> list[dict]:
    """Routines to call in order, preparatory ones first (depth-first over the preparatory lists)."""
    names = aliases(tables)
    order: list[dict] = []

    def visit(x: dict, stack: tuple):
        if x in order or x["address"] in stack:
            return
        for name, _ in prep_list(x):
            if name in names:
                visit(names[name], stack + (x["address"],))
        order.append(x)

    visit(e, ())
    return order


def primary(e: dict) -> str:
    return e["names"][0]


def summary(e: dict) -> str:
    return (clean((e.get("quick") or {}).get("summary")) or "").rstrip(".")


def sentence(text: str) -> str:
    return text if text.endswith((".", ")", "?", "!")) else text + "."


def _field(e: dict, key: str) -> str | None:
    v = clean((e.get("quick") or {}).get(key))
    return None if v in ("–", "-") else v


def address_of(tables, rng):
    items = routines(tables)
    names = aliases(tables)
    for _ in range(3):
        rng.shuffle(items)
        for e in items:
            name = rng.choice([n for n in e["names"] if names.get(n) is e])
            index = (e["value"] - JUMP_TABLE_START) // 3
            q = pick(rng, f"Which address do I JSR to for the KERNAL routine {name}?",
                     f"Where is {name} in the KERNAL jump table?", f"What is the call address of {name}?")
            real = _field(e, "real_address")
            r = join_sentences(
                f"{name} is " + (f"listed with the names {listing(e['names'])}" if len(e["names"]) > 1 else "in the table") +
                f", at {e['address']} ({e['value']}).",
                f"Jump-table entries are 3 bytes apart from {h4(JUMP_TABLE_START)}: ({e['address']} - "
                f"{h4(JUMP_TABLE_START)}) / 3 = {index}, so it is entry {index}.",
                sentence(f"Purpose: {summary(e)}") if summary(e) else "",
                f"The entry passes control on to {real}." if real else "")
            a = sentence(f"JSR {e['address']} ({e['value']}) calls {name}" + (f": {summary(e)}" if summary(e) else ""))
            yield Example(TABLE, "address_of", f"kernal:{e['address']}", q, r, a, {"name": name})


def name_of(tables, rng):
    items = routines(tables)
    for _ in range(3):
        rng.shuffle(items)
        for e in items:
            shown = pick(rng, e["address"], str(e["value"]))
            q = pick(rng, f"What does JSR {shown} do on a C64?", f"Which KERNAL routine is at {shown}?",
                     f"A program calls SYS {e['value']}. Which KERNAL routine runs?" if shown.isdigit() else
                     f"Disassembly shows `JSR {shown}`. What is being called?")
            r = join_sentences(
                f"{shown} = {e['address']} lies in the KERNAL jump table ({h4(JUMP_TABLE_START)}-$FFF3)." if shown.isdigit()
                else f"{shown} is inside the KERNAL jump table ({h4(JUMP_TABLE_START)}-$FFF3).",
                f"The table entry for {e['address']} is {primary(e)}" +
                (f" (also called {listing(e['names'][1:])})." if len(e["names"]) > 1 else "."),
                sentence(f"Summary: {summary(e)}") if summary(e) else "")
            a = sentence(f"{primary(e)}" + (f": {summary(e)}" if summary(e) else ""))
            yield Example(TABLE, "name_of", f"kernal:{e['address']}", q, r, a, {"address": e["value"]})


def registers(tables, rng):
    items = [e for e in routines(tables) if _field(e, "input") or _field(e, "output")]
    for _ in range(3):
        rng.shuffle(items)
        for e in items:
            name = primary(e)
            q = pick(rng, f"How do I pass parameters to {name}, and what does it return?",
                     f"Which registers does {name} ({e['address']}) read and which does it change?",
                     f"Calling convention of the KERNAL routine {name}?")
            inp, out = _field(e, "input"), _field(e, "output")
            comm, affected = _field(e, "communication_registers"), _field(e, "registers_affected")
            r = join_sentences(f"{name} is at {e['address']}.",
                               f"Inputs per the STA reference: {inp or 'none'}.",
                               f"Outputs: {out or 'none'}.",
                               f"The Programmer's Reference Guide lists communication registers {comm}" +
                               (f" and registers affected {affected}." if affected else ".") if comm else
                               (f"Registers affected: {affected}." if affected else ""))
            a = f"{name} ({e['address']}) - in: {inp or 'nothing'}; out: {out or 'nothing'}" + \
                (f"; changes {affected}." if affected and affected.lower() != "none" else ".")
            yield Example(TABLE, "registers", f"kernal:{e['address']}", q, r, a, {"name": name})


def sequence(tables, rng):
    items = [e for e in routines(tables) if prep_list(e)]
    for _ in range(4):
        rng.shuffle(items)
        for e in items:
            name = primary(e)
            seq = call_sequence(tables, e)
            q = pick(rng, f"In which order must KERNAL routines be called to use {name}?",
                     f"What has to be set up before calling {name} ({e['address']})?",
                     f"List the KERNAL call sequence that ends with {name}.")
            steps = []
            for x in seq:
                pre = prep_list(x)
                if pre:
                    parts = [f"{n}{' (only when needed)' if opt else ''}" for n, opt in pre]
                    steps.append(f"{primary(x)} needs {listing(parts)} first.")
            steps.append("Calling the preparatory routines before the routines that need them gives: " +
                         ", ".join(primary(x) for x in seq) + ".")
            optional = [n for n, opt in prep_list(e) if opt]
            if optional:
                steps.append(f"The table marks {listing(optional)} as optional for {name} "
                             "(needed only for a device other than the default one).")
            r = join_sentences(*steps)
            a = " -> ".join(f"{primary(x)} ({x['address']})" for x in seq) + "."
            yield Example(TABLE, "sequence", f"kernal:{e['address']}", q, r, a, {"name": name})


def errors_stack(tables, rng):
    items = [e for e in routines(tables) if _field(e, "error_returns") or _field(e, "stack_requirements")]
    for _ in range(3):
        rng.shuffle(items)
        for e in items:
            name = primary(e)
            err, stack = _field(e, "error_returns"), _field(e, "stack_requirements")
            q = pick(rng, f"What errors can {name} report, and how much stack does it need?",
                     f"Error returns and stack use of the KERNAL routine at {e['address']}?")
            r = join_sentences(f"{e['address']} is {name}.",
                               f"The Programmer's Reference Guide gives error returns: {err or 'not listed'}.",
                               f"Stack requirements: {stack or 'not listed'}.",
                               f"Per the STA reference it returns: {_field(e, 'output')}."
                               if "carry" in (_field(e, "output") or "").lower() else "")
            a = f"{name}: error returns {err or 'not listed'}; stack {stack or 'not listed'}."
            yield Example(TABLE, "errors_stack", f"kernal:{e['address']}", q, r, a, {"name": name})


def vector(tables, rng):
    items = [e for e in routines(tables) if _VECTOR.match(_field(e, "real_address") or "")]
    mem = {m["start"]: m for m in tables.get("memory_map", {}).get("entries", []) if m["end"] == m["start"] + 1}
    for _ in range(4):
        rng.shuffle(items)
        for e in items:
            name = primary(e)
            vec_s, target_s = _VECTOR.match(_field(e, "real_address")).groups()
            vec, target = int(vec_s, 16), int(target_s, 16)
            q = pick(rng, f"Through which RAM vector does {name} go, and where does it end up by default?",
                     f"How can I hook {name} ({e['address']})?",
                     f"{name} is vectored. Which vector and which ROM address?")
            label = ""
            m = mem.get(vec)
            if m and m.get("symbols"):
                label = f" The memory map calls {h4(vec)}-{h4(vec + 1)} {m['symbols'][0]}."
            r = join_sentences(f"The real address of {name} is given as ({h4(vec)}), {h4(target)}.",
                               f"So the jump-table entry jumps indirectly through the vector at {h4(vec)}/{h4(vec + 1)} "
                               f"(low byte {h4(vec)}), which by default holds {h4(target)}.{label}",
                               "Changing that vector redirects every call.")
            a = (f"{name} jumps through ({h4(vec)}) - bytes {h2(target & 0xFF)} {h2(target >> 8)} at "
                 f"{h4(vec)}/{h4(vec + 1)} - to {h4(target)} by default; point the vector at your routine to hook it.")
            yield Example(TABLE, "vector", f"kernal:{e['address']}", q, r, a, {"name": name})


KINDS = {"address_of": address_of, "name_of": name_of, "registers": registers, "sequence": sequence,
         "errors_stack": errors_stack, "vector": vector}
