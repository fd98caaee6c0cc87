"""SFT questions about RAM locations $0000-$03FF (zero page, stack, pages 2-3), from memory_map.json."""
from __future__ import annotations

import re

from data.reference_tables import SOURCE_TITLES, clean_symbols, entry_heading, h2, h4
from data.sft_example import Example, dec_to_hex_steps, join_sentences, pick

TABLE = "memory_map"
_POINTERISH = re.compile(r"pointer|vector|address of|start of|end of", re.I)


def entries(tables) -> list[dict]:
    return [e for e in tables[TABLE]["entries"] if entry_heading(e)]


def most_specific(table_entries: list[dict], address: int) -> dict | None:
    hits = [e for e in table_entries if e["start"] <= address <= e["end"]]
    return min(hits, key=lambda e: (e["end"] - e["start"], e["start"])) if hits else None


def name_of(e: dict) -> str:
    syms = clean_symbols(e)
    return syms[0] if syms else ""


def called(e: dict) -> str:
    """'TXTTAB ($002B-$002C)' or, for unlabelled areas, 'the area $013F-$01FF'."""
    return f"{name_of(e)} ({_span(e)})" if name_of(e) else f"the area {_span(e)}"


def labelled(e: dict) -> str:
    return f"entry {name_of(e)} ({_span(e)})" if name_of(e) else f"area {_span(e)}"


def title(source: str) -> str:
    t = SOURCE_TITLES.get(source, source)
    return t[0].upper() + t[1:]


def clean_heading(text: str) -> str:
    return text.strip().rstrip(".")


def _span(e: dict) -> str:
    return h4(e["start"]) if e["start"] == e["end"] else f"{h4(e['start'])}-{h4(e['end'])}"


def _dec_span(e: dict) -> str:
    return str(e["start"]) if e["start"] == e["end"] else f"{e['start']}-{e['end']}"


def location(tables, rng):
    addresses = list(range(0x400))
    rng.shuffle(addresses)
    known = entries(tables)
    for addr in addresses:
        e = most_specific(known, addr)
        if e is None:
            continue
        source, heading = entry_heading(e)
        use_dec = rng.random() < 0.5
        shown = f"{addr}" if use_dec else h4(addr)
        q = pick(rng, f"What is stored at location {shown} on the C64?",
                 f"What does the KERNAL/BASIC use address {shown} for?",
                 f"PEEK({addr}) - what is that location?" if use_dec else f"What is at {h4(addr)} in the memory map?",
                 f"Explain memory location {shown}.")
        steps = []
        if use_dec:
            steps.append(f"Convert first: {dec_to_hex_steps(addr)}.")
        size = e["end"] - e["start"] + 1
        if size == 1:
            steps.append(f"The memory map has a one-byte entry at {h4(addr)}" +
                         (f", label {name_of(e)}." if name_of(e) else "."))
            where = ""
        else:
            offset = addr - e["start"]
            if size == 2:
                where = "low byte" if offset == 0 else "high byte"
                steps.append(f"{h4(addr)} falls in the two-byte {labelled(e)}; as the "
                             f"{'first' if offset == 0 else 'second'} byte it holds the {where}.")
            else:
                where = f"byte {offset} (counting from 0) of"
                steps.append(f"{h4(addr)} lies inside the {size}-byte {labelled(e)}, "
                             f"offset {addr} - {e['start']} = {offset}.")
        heading = clean_heading(heading)
        steps.append(f"{title(source)} describes it as \"{heading}\".")
        other = [d for d in e["descriptions"] if d["source"] != source and (d.get("heading") or "").strip()]
        if other and rng.random() < 0.6:
            d = rng.choice(other)
            steps.append(f"{title(d['source'])} calls it \"{clean_heading(d['heading'])}\".")
        r = join_sentences(*steps)
        a = f"{h4(addr)} ({addr}) is " + (f"the {where} " if where else "") + f"{called(e)}: {heading}."
        yield Example(TABLE, "location", f"memory_map:{_span(e)}", q, r, a, {"address": addr})


def symbol_address(tables, rng):
    owners: dict[str, list[dict]] = {}
    for e in tables[TABLE]["entries"]:      # all entries: a label on two ranges is ambiguous even if one has no heading
        for s in clean_symbols(e):
            owners.setdefault(s, []).append(e)
    unique = sorted(s for s, es in owners.items() if len(es) == 1 and entry_heading(es[0]))
    rng.shuffle(unique)
    for sym in unique:
        e = owners[sym][0]
        source, heading = entry_heading(e)
        heading = clean_heading(heading)
        q = pick(rng, f"Where in memory is the system variable {sym}?", f"Which address does the label {sym} stand for?",
                 f"I see {sym} in a ROM listing. What address is it and what is it for?")
        size = e["end"] - e["start"] + 1
        r = join_sentences(f"In the memory map, {sym} labels {_span(e)}.",
                           f"That is {size} byte{'s' if size > 1 else ''}, decimal {_dec_span(e)}.",
                           f"Description ({SOURCE_TITLES.get(source, source)}): \"{heading}\".")
        a = f"{sym} is at {_span(e)} ({_dec_span(e)}): {heading}."
        yield Example(TABLE, "symbol_address", f"memory_map:{_span(e)}", q, r, a, {"symbol": sym})


def pointer_value(tables, rng):
    cands = [e for e in entries(tables) if e["end"] - e["start"] == 1 and clean_symbols(e)
             and any(_POINTERISH.search(d.get("heading") or "") for d in e["descriptions"])]
    while True:
        e = rng.choice(cands)
        lo, hi = rng.randrange(256), rng.choice([rng.randrange(256), 0x08, 0xA0, 0x03, 0xC0])
        value = lo + 256 * hi
        sym = name_of(e)
        heading = clean_heading(next(d["heading"] for d in e["descriptions"]
                                     if _POINTERISH.search(d.get("heading") or "")))
        if rng.random() < 0.5:
            q = pick(rng, f"PEEK({e['start']}) returns {lo} and PEEK({e['end']}) returns {hi}. What address does "
                          f"{sym} hold?",
                     f"{sym} ({heading}) reads {lo},{hi} at {e['start']}/{e['end']}. Which address is that?")
        else:
            q = pick(rng, f"A monitor shows `{h4(e['start'])}: {lo:02X} {hi:02X}`. What value does {sym} contain?",
                     f"The bytes at {h4(e['start'])} and {h4(e['end'])} are {h2(lo)} and {h2(hi)}. "
                     f"Where does {sym} point?")
        r = join_sentences(f"{sym} at {_span(e)} is described as \"{heading}\", a 16-bit value stored low byte first.",
                           pick(rng, f"Low byte {lo} (${lo:02X}) at {h4(e['start'])}, high byte {hi} (${hi:02X}) at "
                                     f"{h4(e['end'])}.",
                                f"So {h4(e['start'])} holds the low byte {h2(lo)} and {h4(e['end'])} the high byte "
                                f"{h2(hi)}."),
                           f"Value = {lo} + 256*{hi} = {value} = {h4(value)}.")
        a = f"{sym} = {h4(value)} ({value})."
        yield Example(TABLE, "pointer_value", f"memory_map:{_span(e)}", q, r, a,
                      {"symbol": sym, "start": e["start"], "lo": lo, "hi": hi})


KINDS = {"location": location, "symbol_address": symbol_address, "pointer_value": pointer_value}
