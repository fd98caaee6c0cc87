"""SFT questions about the I/O registers (VIC-II, SID, CIAs, 6510 port), from io_registers.json."""
from __future__ import annotations

import re

from data.reference_tables import SOURCE_TITLES, b8, chip_for, clean_symbols, entry_heading, h2, h4, register_layout
from data.sft_example import Example, dec_to_hex_steps, join_sentences, pick

TABLE = "io_registers"
SHORT_LAYOUT = 260
SHORT_FIELD = 90
_UNUSED = re.compile(r"^(?:not used|unused|undefined)\b", re.I)


def registers(tables) -> list[dict]:
    return [e for e in tables[TABLE]["entries"]
            if e["start"] == e["end"] and clean_symbols(e) and entry_heading(e, ("mapc64", "prg"))]


def with_layout(tables) -> list[tuple[dict, str, list]]:
    out = []
    for e in tables[TABLE]["entries"]:
        if e["start"] == e["end"]:
            lay = register_layout(e)
            if lay:
                out.append((e, lay[0], lay[1]))
    return out


def reg_name(e: dict) -> str:
    syms = clean_symbols(e)
    return f"{h4(e['start'])} ({syms[0]})" if syms else h4(e["start"])


def heading(e: dict) -> str:
    return entry_heading(e, ("mapc64", "prg"))[1].strip().rstrip(".")


def chip_phrase(addr: int) -> str:
    chip = chip_for(addr)
    return f"the {chip.name}" if chip else "the 6510's on-chip port"


def register_lookup(tables, rng):
    regs = registers(tables)
    while True:
        e = rng.choice(regs)
        real = e["start"]
        chip = chip_for(real)
        shown = real
        if chip and chip.mirror and rng.random() < 0.4:
            copies = (chip.end - chip.start + 1) // chip.mirror
            shown = real + chip.mirror * rng.randrange(1, copies)
        use_dec = rng.random() < 0.5
        label = str(shown) if use_dec else h4(shown)
        q = pick(rng, f"What does address {label} control on the C64?", f"What is the I/O register at {label}?",
                 f"A program writes to {label}. Which chip register is that?",
                 f"POKE {shown},X - what does that location do?" if use_dec else f"Which register is {label}?")
        steps = [f"Convert: {dec_to_hex_steps(shown)}."] if use_dec else []
        if chip:
            offset = shown - chip.start
            steps.append(f"{h4(chip.start)}-{h4(chip.end)} is {chip_phrase(shown)}; the offset is "
                         f"{h4(shown)} - {h4(chip.start)} = {h2(offset) if offset < 256 else h4(offset)}.")
            if shown != real:
                steps.append(f"The {chip.name} decodes only {chip.mirror} registers, so its registers repeat every "
                             f"{h2(chip.mirror)} bytes: {h2(offset) if offset < 256 else h4(offset)} mod "
                             f"{h2(chip.mirror)} = {h2(offset % chip.mirror)}, i.e. {h4(real)}.")
            else:
                steps.append(f"That is register {offset} of the {chip.name}.")
        else:
            steps.append(f"{h4(real)} is not in the I/O area; it belongs to the 6510's built-in port.")
        steps.append(f"The I/O map names {h4(real)} {clean_symbols(e)[0]}: \"{heading(e)}\".")
        r = join_sentences(*steps)
        mirror = f" (a mirror of {h4(real)})" if shown != real else ""
        a = f"{h4(shown)}{mirror} is {chip_phrase(real)} register {reg_name(e)}: {heading(e)}."
        yield Example(TABLE, "register_lookup", f"io:{h4(real)}", q, r, a, {"address": shown, "register": real})


def bit_meaning(tables, rng):
    items = [(e, src, f) for e, src, fields in with_layout(tables) for f in fields if not _UNUSED.match(f.text)]
    for _ in range(3):
        rng.shuffle(items)
        for e, src, f in items:
            addr = e["start"]
            if f.width == 1 and rng.random() < 0.3:
                q = pick(rng, f"Which bit of {reg_name(e)} is described as \"{f.text}\"?",
                         f"In register {h4(addr)}, which bit controls this: {f.text}?")
            else:
                where = pick(rng, h4(addr), str(addr), reg_name(e))
                q = pick(rng, f"What does {f.label()} of {where} do?", f"Explain {f.label()} in register {where}.",
                         f"What is {f.label()} of {where} for?")
            r = join_sentences(f"{reg_name(e)} is a register of {chip_phrase(addr)}: \"{heading(e)}\".",
                               pick(rng, f"In the bit layout from {SOURCE_TITLES[src]}, {f.label()} reads \"{f.text}\".",
                                    f"{SOURCE_TITLES[src][0].upper() + SOURCE_TITLES[src][1:]} lists {f.label()} as "
                                    f"\"{f.text}\"."),
                               f"That field is {f.width} bit{'s' if f.width > 1 else ''} wide, "
                               f"mask {h2(((1 << f.width) - 1) << f.lo)}.")
            a = f"{f.label().capitalize()} of {reg_name(e)}: {f.text}."
            yield Example(TABLE, "bit_meaning", f"io:{h4(addr)}", q, r, a, {"register": addr, "lo": f.lo, "hi": f.hi})


def value_decode(tables, rng):
    # Registers whose layout text is short enough for a compact answer (the CIA interrupt registers
    # in Mapping spell out read and write meaning per bit and would make very long turns).
    items = [x for x in with_layout(tables) if sum(len(f.text) for f in x[2]) <= SHORT_LAYOUT]
    while True:
        e, src, fields = rng.choice(items)
        v = rng.randrange(256)
        addr = e["start"]
        q = pick(rng, f"What does writing {h2(v)} to {reg_name(e)} select, field by field?",
                 f"Decode the value {v} in register {h4(addr)} bit by bit.",
                 f"POKE {addr},{v}: what does each bit field of that register now say?",
                 f"Break down {h2(v)} as a value of {h4(addr)}.")
        steps = [pick(rng, f"{h2(v)} = {v} = {b8(v)} in binary (bit 7 first).",
                      f"In binary {v} is {b8(v)}, reading bit 7 down to bit 0.",
                      f"First the bits: {h2(v)} = {b8(v)}."),
                 pick(rng, f"Layout of {reg_name(e)} from {SOURCE_TITLES[src]}:",
                      f"Now apply the field layout {SOURCE_TITLES[src]} gives for {reg_name(e)}:",
                      f"{reg_name(e)} ({heading(e)}) splits into these fields:")]
        parts = []
        for f in sorted(fields, key=lambda x: -x.lo):
            val = f.value_of(v)
            shown = str(val) if f.width == 1 else f"{val} (%{val:0{f.width}b})"
            steps.append(f"{f.label()} = {shown}: {f.text}.")
            parts.append(f"{f.label()} = {val}")
        r = join_sentences(*steps)
        a = f"{h2(v)} = {b8(v)} in {reg_name(e)}: " + ", ".join(parts) + "."
        yield Example(TABLE, "value_decode", f"io:{h4(addr)}", q, r, a, {"register": addr, "value": v})


def _single_bits(fields):
    return [f for f in fields if f.width == 1 and not _UNUSED.match(f.text) and len(f.text) <= SHORT_FIELD]


def value_compose(tables, rng):
    items = [(e, src, _single_bits(fields)) for e, src, fields in with_layout(tables)]
    items = [x for x in items if len(x[2]) >= 2]
    while True:
        e, src, bits = rng.choice(items)
        chosen = sorted(rng.sample(bits, rng.randrange(1, min(3, len(bits)) + 1)), key=lambda f: f.lo)
        v = sum(1 << f.lo for f in chosen)
        addr = e["start"]
        wanted = "; ".join(f"\"{f.text}\"" for f in chosen)
        q = pick(rng, f"Which value must be written to {reg_name(e)} so that only these bits are 1: {wanted}?",
                 f"Give the byte for {h4(addr)} with exactly these fields set and all other bits 0: {wanted}.")
        if rng.random() < 0.5:
            steps = [f"In {SOURCE_TITLES[src]}'s layout of {reg_name(e)}: " +
                     "; ".join(f"\"{f.text}\" is bit {f.lo}, worth 2^{f.lo} = {1 << f.lo}" for f in chosen) + "."]
        else:
            steps = [f"Find each field in {reg_name(e)}: " +
                     ", ".join(f"bit {f.lo} ({f.text})" for f in chosen) + ".",
                     "Their weights are " + ", ".join(f"{h2(1 << f.lo)}" for f in chosen) + "."]
        steps.append(pick(rng, f"Sum: {' + '.join(str(1 << f.lo) for f in chosen)} = {v} = {h2(v)} = {b8(v)}.",
                          f"Adding the weights gives {v}, which is {h2(v)} or {b8(v)}; every other bit stays 0.",
                          f"OR-ing them together: {b8(v)} = {h2(v)} = {v}."))
        r = join_sentences(*steps)
        a = f"{h2(v)} ({v}), binary {b8(v)}: POKE {addr},{v} or LDA #{h2(v)} : STA {h4(addr)}."
        yield Example(TABLE, "value_compose", f"io:{h4(addr)}", q, r, a,
                      {"register": addr, "bits": [f.lo for f in chosen]})


def bit_mask_code(tables, rng):
    items = [(e, f) for e, src, fields in with_layout(tables) for f in _single_bits(fields)]
    for _ in range(3):
        rng.shuffle(items)
        for e, f in items:
            addr = e["start"]
            setting = rng.random() < 0.5
            mask = 1 << f.lo
            q = pick(rng, f"Write 6502 code that {'sets' if setting else 'clears'} bit {f.lo} of {reg_name(e)} "
                          f"without changing the other bits.",
                     f"How do I {'set' if setting else 'clear'} only \"{f.text}\" (bit {f.lo}) in {h4(addr)}, "
                     f"in assembly and in BASIC?")
            weight = pick(rng, f"Bit {f.lo} has the weight 2^{f.lo} = {mask} = {h2(mask)}.",
                          f"The mask for bit {f.lo} is 1 shifted left {f.lo} times: {h2(mask)} ({b8(mask)}).",
                          f"\"{f.text}\" is bit {f.lo}, so its mask is {mask} ({h2(mask)}).")
            if setting:
                steps = [weight,
                         pick(rng, f"ORing with {h2(mask)} forces that bit to 1 and leaves the others as they were.",
                              "OR sets exactly the bits that are 1 in the mask; every other bit keeps its value."),
                         pick(rng, f"So: read {h4(addr)}, ORA #{h2(mask)}, write it back.",
                              f"Read-modify-write: LDA {h4(addr)}, ORA with the mask, STA back.")]
                code = f"LDA {h4(addr)} / ORA #{h2(mask)} / STA {h4(addr)}"
                basic = f"POKE {addr},PEEK({addr}) OR {mask}"
            else:
                inv = 0xFF ^ mask
                steps = [weight,
                         pick(rng, f"To clear it, AND with the inverted mask: $FF - {h2(mask)} = {h2(inv)} ({b8(inv)}).",
                              f"Clearing needs AND with every bit set except that one: {b8(inv)} = {h2(inv)} = {inv}."),
                         pick(rng, f"So: read {h4(addr)}, AND #{h2(inv)}, write it back.",
                              f"Read {h4(addr)}, mask it with AND #{h2(inv)}, store it again.")]
                code = f"LDA {h4(addr)} / AND #{h2(inv)} / STA {h4(addr)}"
                basic = f"POKE {addr},PEEK({addr}) AND {inv}"
            r = join_sentences(*steps)
            a = f"{code} (BASIC: {basic})."
            yield Example(TABLE, "bit_mask_code", f"io:{h4(addr)}", q, r, a,
                          {"register": addr, "bit": f.lo, "set": setting})


KINDS = {"register_lookup": register_lookup, "bit_meaning": bit_meaning, "value_decode": value_decode,
         "value_compose": value_compose, "bit_mask_code": bit_mask_code}
