"""SFT questions on the keyboard matrix, PETSCII codes and the colour palette, from keyboard_petscii.json."""
from __future__ import annotations

from data.reference_tables import b8, h2, parse_hex
from data.sft_example import Example, join_sentences, pick

TABLE = "keyboard_petscii"
MODIFIERS = {"regular": "no modifier", "shift": "SHIFT", "cbm": "the Commodore (C=) key", "ctrl": "CTRL"}
COLOUR_REGISTERS = {53280: "$D020 (border colour)", 53281: "$D021 (background colour 0)", 646: "$0286 (cursor colour)"}


def keys(tables) -> list[dict]:
    return tables[TABLE]["keys"]


def key_scan(tables, rng):
    items = list(keys(tables))
    for _ in range(3):
        rng.shuffle(items)
        for k in items:
            pa, pb = k["cia1_pa_bit"], k["cia1_pb_bit"]
            out = 0xFF ^ (1 << pa)
            mask = 1 << pb
            q = pick(rng, f"How can a program test whether the {k['key']} key is held down, reading CIA 1 directly?",
                     f"Write a keyboard-matrix check for the key {k['key']}.",
                     f"Which $DC00 value and which $DC01 bit detect {k['key']}?")
            r = join_sentences(
                pick(rng, f"In the keyboard matrix, {k['key']} sits on CIA 1 port A line {pa} and port B line {pb}.",
                     f"The matrix table puts {k['key']} (scan code {k['scancode']}) at PA{pa} / PB{pb} of CIA 1.",
                     f"{k['key']}: the column is selected by $DC00 bit {pa}, the row is read on $DC01 bit {pb}."),
                pick(rng, f"Drive only that port A line low: $FF with bit {pa} cleared = {h2(out)} ({b8(out)}), "
                          f"written to $DC00.",
                     f"Lines are active low, so write {b8(out)} = {h2(out)} to $DC00 (only bit {pa} is 0).",
                     f"Select it by clearing bit {pa} of $DC00: 255 - {1 << pa} = {out} = {h2(out)}."),
                pick(rng, f"Then read $DC01: bit {pb} (mask {h2(mask)}) reads 0 while the key is pressed.",
                     f"A pressed key pulls $DC01 bit {pb} low, so AND #{h2(mask)} gives zero when it is down.",
                     f"Test $DC01 with mask {h2(mask)} = 2^{pb}: a 0 result means pressed."))
            a = (f"LDA #{h2(out)} / STA $DC00 / LDA $DC01 / AND #{h2(mask)} / BEQ pressed - "
                 f"{k['key']} is pressed when bit {pb} of $DC01 is 0.")
            yield Example(TABLE, "key_scan", f"keyboard:{k['scancode']}", q, r, a, {"scancode": k["scancode"]})


def scancode(tables, rng):
    items = list(keys(tables))
    for _ in range(3):
        rng.shuffle(items)
        for k in items:
            q = pick(rng, f"Which value does the KERNAL put in $CB while {k['key']} is pressed?",
                     f"What is the keyboard scan code of {k['key']}?",
                     f"PEEK(203) returns what while only the {k['key']} key is down?")
            r = join_sentences(f"The scan code is 8*row + column, with the row = the CIA 1 port A line "
                               f"({k['cia1_pa_bit']}) and the column = the port B line ({k['cia1_pb_bit']}).",
                               f"8*{k['cia1_pa_bit']} + {k['cia1_pb_bit']} = {k['scancode']} = {k['scancode_hex']}.",
                               "With no key pressed the value is 64.")
            a = f"{k['scancode']} ({k['scancode_hex']}) for {k['key']}."
            yield Example(TABLE, "scancode", f"keyboard:{k['scancode']}", q, r, a, {"scancode": k["scancode"]})


def petscii(tables, rng):
    items = [(k, m) for k in keys(tables) for m in MODIFIERS if k.get(m)]
    for _ in range(2):
        rng.shuffle(items)
        for k, m in items:
            code = parse_hex(k[m])
            name = k.get(f"{m}_name")
            combo = k["key"] if m == "regular" else f"{MODIFIERS[m].replace('the ', '')}+{k['key']}"
            q = pick(rng, f"Which PETSCII code does {combo} produce?", f"What does GET A$ return for {combo}? Give ASC(A$).",
                     f"Pressing {k['key']} with {MODIFIERS[m]}: which character code?")
            r = join_sentences(f"The keyboard table lists for {k['key']} (scan code {k['scancode']}) the code {k[m]} with "
                               f"{MODIFIERS[m]}.",
                               f"{k[m]} = {code}" + (f", the control code {name}." if name else "."))
            a = f"{combo} gives PETSCII {k[m]} ({code})" + (f", {name}." if name else ".")
            yield Example(TABLE, "petscii", f"keyboard:{k['scancode']}", q, r, a, {"scancode": k["scancode"], "modifier": m})


def control_code(tables, rng):
    items = list(tables[TABLE]["control_codes"])
    for _ in range(4):
        rng.shuffle(items)
        for c in items:
            pretty = c["name"].replace("_", " ")
            if rng.random() < 0.5:
                q = pick(rng, f"What does PRINT CHR$({c['value']}) do?", f"What is the PETSCII control code {c['code']}?")
            else:
                q = pick(rng, f"Which CHR$ code gives {pretty}?", f"Which PETSCII code is {c['name']}?")
            r = join_sentences(f"The control-code table pairs {c['code']} ({c['value']}) with {c['name']}.",
                               f"{c['value']} = {c['code']} = {b8(c['value'])}.",
                               "Printing it performs the action instead of showing a character.")
            a = f"CHR$({c['value']}) ({c['code']}) is {c['name']}."
            yield Example(TABLE, "control_code", f"petscii:{c['code']}", q, r, a, {"code": c["value"]})


def palette(tables, rng):
    colours = tables[TABLE]["palette"]
    items = [(p, reg) for p in colours for reg in COLOUR_REGISTERS]
    for _ in range(2):
        rng.shuffle(items)
        for p, reg in items:
            if rng.random() < 0.5:
                q = pick(rng, f"What colour does POKE {reg},{p['index']} give?",
                         f"After POKE {reg},{p['index']}, which colour appears?")
                a = f"Colour {p['index']} is {p['name']} (RGB {p['rgb']}) - written to {COLOUR_REGISTERS[reg]}."
            else:
                q = pick(rng, f"Which value makes {COLOUR_REGISTERS[reg]} {p['name']}?",
                         f"How do I set {COLOUR_REGISTERS[reg]} to {p['name']}?")
                a = f"POKE {reg},{p['index']} ({p['name']} is colour {p['index']}, RGB {p['rgb']})."
            r = join_sentences(
                pick(rng, f"Location {reg} is {COLOUR_REGISTERS[reg]}, which takes a colour number 0-15.",
                     f"{reg} = {COLOUR_REGISTERS[reg]}; it holds one of the 16 colour codes.",
                     f"Writing to {reg} sets {COLOUR_REGISTERS[reg].split(' ', 1)[1].strip('()')}."),
                pick(rng, f"In the 16-colour palette, {p['index']} = {p['name']} ({p['rgb']} in the table's palette).",
                     f"The palette table lists colour {p['index']} as {p['name']}, RGB {p['rgb']}.",
                     f"{p['name'].capitalize()} is entry {p['index']} of the palette ({p['rgb']})."))
            yield Example(TABLE, "palette", f"palette:{p['index']}", q, r, a, {"index": p["index"], "register": reg})


KINDS = {"key_scan": key_scan, "scancode": scancode, "petscii": petscii, "control_code": control_code,
         "palette": palette}
