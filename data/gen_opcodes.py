"""SFT questions about the 6502/6510 instruction set, answered from opcodes.json."""
from __future__ import annotations

import random

from data.reference_tables import h2, h4
from data.sft_example import Example, join_sentences, listing, pick, plural

TABLE = "opcodes"
PAGE_PENALTY = "+1 if a page boundary is crossed"
BRANCH_PENALTY = "+1 if the branch is taken"
FLAG_NAMES = {"N": "negative (N)", "V": "overflow (V)", "B": "break (B)", "D": "decimal (D)",
              "I": "interrupt disable (I)", "Z": "zero (Z)", "C": "carry (C)"}


def ops(tables) -> list[dict]:
    return tables[TABLE]["opcodes"]


def has_page_penalty(op: dict) -> bool:
    return PAGE_PENALTY in (op.get("cycles_extra") or []) and op.get("category") != "bra"


def timing_text(op: dict) -> str:
    if op.get("jams_cpu"):
        return "it never finishes: it jams the CPU"
    extra = [x for x in op.get("cycles_extra") or []]
    return f"{op['cycles']} cycles" + ("".join(f", {x}" for x in extra))


def operand_example(op: dict, rng: random.Random) -> tuple[str, list[int]]:
    """A concrete instruction text and its operand bytes for the opcode's addressing mode."""
    mode = op["mode_code"]
    mnem = op["mnemonic"]
    if mode in ("-",):
        return mnem, []
    if mode == "A":
        return f"{mnem} A", []
    if mode == "#d8":
        v = rng.randrange(256)
        return f"{mnem} #${v:02X}", [v]
    if mode in ("a8", "a8,X", "a8,Y", "(a8,X)", "(a8),Y"):
        v = rng.randrange(2, 256)
        text = {"a8": f"${v:02X}", "a8,X": f"${v:02X},X", "a8,Y": f"${v:02X},Y",
                "(a8,X)": f"(${v:02X},X)", "(a8),Y": f"(${v:02X}),Y"}[mode]
        return f"{mnem} {text}", [v]
    if mode in ("a16", "a16,X", "a16,Y", "(a16)"):
        v = rng.choice([rng.randrange(0x0400, 0xCFFF), rng.choice([0xD020, 0xD021, 0xD011, 0xD418, 0xDC0D,
                                                                  0xFFD2, 0x0314, 0xC000, 0x0400, 0xD800])])
        text = {"a16": f"${v:04X}", "a16,X": f"${v:04X},X", "a16,Y": f"${v:04X},Y", "(a16)": f"(${v:04X})"}[mode]
        return f"{mnem} {text}", [v & 0xFF, v >> 8]
    raise ValueError(mode)


def unique_syntax_ops(tables) -> list[dict]:
    """Opcodes whose (mnemonic, addressing mode) pair names exactly one byte (so encoding is unambiguous)."""
    seen: dict[tuple, list[dict]] = {}
    for op in ops(tables):
        if op.get("jams_cpu"):
            continue
        seen.setdefault((op["mnemonic"], op["mode_code"]), []).append(op)
    return [v[0] for v in seen.values() if len(v) == 1]


def mode_reasoning(op: dict, rng: random.Random) -> str:
    n = op["bytes"]
    if n == 1:
        return pick(rng, f"{op['addressing_mode']} mode has no operand, so the instruction is the single opcode byte.",
                    f"There is no operand in {op['addressing_mode']} mode: 1 byte in all.")
    return pick(rng, f"{op['addressing_mode']} mode takes {plural(n - 1, 'operand byte')}, so {n} bytes with the opcode.",
                f"The opcode is followed by {plural(n - 1, 'operand byte')} ({op['addressing_mode']}), {n} bytes in total.")


# --- kinds ------------------------------------------------------------------------------------------

def decode(tables, rng):
    table = list(ops(tables))
    rng.shuffle(table)
    for op in table:
        code = op["opcode"]
        q = pick(rng,
                 f"What instruction is the opcode byte {code} on the 6510?",
                 f"Disassemble the byte {code}: which mnemonic and addressing mode is it?",
                 f"I found {code} in a hex dump of C64 machine code. Which instruction is that, how many bytes "
                 f"does it use and how long does it take?",
                 f"Decode opcode {code} ({op['value']} decimal) for me.",
                 f"Which 6502 instruction has the opcode {code}?")
        status = ("It is one of the documented instructions." if op["documented"] else
                  "The table marks it as undocumented (an \"illegal\" opcode)" +
                  (f", also known as {op['other_names']}." if op.get("other_names") else "."))
        if op.get("jams_cpu"):
            r = join_sentences(f"Looking up {code} in the opcode table gives {op['mnemonic']} ({op['name']}).",
                               status, "Its operation is to stop execution: the CPU locks up until reset.")
            a = f"{code} is {op['syntax']}, an undocumented opcode that halts (jams) the CPU; only a reset recovers."
        else:
            r = join_sentences(
                pick(rng, f"Looking up {code} in the opcode table: {op['mnemonic']} in {op['addressing_mode']} mode, "
                          f"written {op['syntax']}.",
                     f"The table row for {code} is {op['syntax']} - {op['name']}, {op['addressing_mode']} addressing."),
                status, mode_reasoning(op, rng),
                pick(rng, f"Timing from the table: {timing_text(op)}.", f"It takes {timing_text(op)}."))
            a = f"{code} is {op['syntax']} ({op['name']}, {op['addressing_mode']}): {plural(op['bytes'], 'byte')}, {timing_text(op)}."
        yield Example(TABLE, "decode", f"opcodes:{code}", q, r, a, {"opcode": op["value"]})


def encode(tables, rng):
    table = unique_syntax_ops(tables)
    for _ in range(4):
        rng.shuffle(table)
        for op in table:
            if op["mode_code"] == "r8":
                yield _encode_branch(op, rng)
                continue
            text, operand = operand_example(op, rng)
            byts = [op["value"]] + operand
            hexes = " ".join(f"{b:02X}" for b in byts)
            q = pick(rng, f"Which bytes does an assembler emit for `{text}`?",
                     f"Hand-assemble `{text}` into machine code bytes.",
                     f"What is the opcode of `{text}`, and what are the full instruction bytes?")
            operand_note = ("" if not operand else
                            f"The operand follows as {' '.join(f'${b:02X}' for b in operand)}" +
                            (" (low byte first)." if len(operand) == 2 else "."))
            r = join_sentences(
                pick(rng, f"The operand form of `{text}` is {op['addressing_mode']} addressing ({op['syntax']}).",
                     f"`{text}` uses {op['addressing_mode']} mode, pattern {op['syntax']}."),
                pick(rng, f"In the opcode table, {op['syntax']} is {op['opcode']}.",
                     f"The table gives opcode {op['opcode']} for that mnemonic and mode."),
                operand_note)
            a = f"`{text}` assembles to {hexes} (opcode {op['opcode']}, {op['bytes']} bytes)."
            yield Example(TABLE, "encode", f"opcodes:{op['opcode']}", q, r, a,
                          {"opcode": op["value"], "operand": operand, "text": text})


def _encode_branch(op: dict, rng) -> Example:
    at = rng.randrange(0x0800, 0xCF00)
    delta = rng.randrange(-128, 128)
    target = at + 2 + delta
    offset = delta & 0xFF
    text = f"{op['mnemonic']} {h4(target)}"
    q = pick(rng, f"Assemble `{text}` located at {h4(at)}: which bytes come out?",
             f"The instruction `{text}` sits at {h4(at)}. Hand-assemble it.")
    r = join_sentences(f"{op['mnemonic']} uses relative addressing, opcode {op['opcode']} in the table.",
                       f"The offset counts from the next instruction: {h4(at)} + 2 = {h4(at + 2)}.",
                       f"{h4(target)} - {h4(at + 2)} = {delta}, which fits in a signed byte (-128..127): "
                       f"{delta} = {h2(offset)}.")
    a = f"`{text}` at {h4(at)} assembles to {op['value']:02X} {offset:02X} (opcode {op['opcode']}, offset {h2(offset)})."
    return Example(TABLE, "encode", f"opcodes:{op['opcode']}", q, r, a,
                   {"opcode": op["value"], "at": at, "target": target, "text": text})


def cycles_indexed(tables, rng):
    cands = [op for op in ops(tables) if op["mode_code"] in ("a16,X", "a16,Y", "(a8),Y") and not op.get("jams_cpu")]
    while True:
        op = rng.choice(cands)
        index = rng.choice([rng.randrange(1, 256), rng.randrange(1, 0x20)])
        base = rng.randrange(0x0200, 0xFF00)
        if rng.random() < 0.5:   # make page crossings as common as same-page accesses
            base = (base & 0xFF00) | rng.randrange(0x100 - index, 0x100)
        ea = (base + index) & 0xFFFF
        crossed = (base >> 8) != (ea >> 8)
        reg = "Y" if op["mode_code"] != "a16,X" else "X"
        if op["mode_code"] == "(a8),Y":
            zp = rng.randrange(2, 0xFF)
            text = f"{op['mnemonic']} (${zp:02X}),Y"
            q = pick(rng, f"How many cycles does `{text}` take when ${zp:02X}/${zp + 1:02X} hold the pointer "
                          f"{h4(base)} and Y = {h2(index)}?",
                     f"Pointer at ${zp:02X} = {h4(base)}, Y = {h2(index)}. Cycle count of `{text}`?")
            addr_step = (f"The pointer at ${zp:02X}/${zp + 1:02X} gives base {h4(base)}; adding Y = {h2(index)} "
                         f"gives {h4(ea)}.")
            params = {"opcode": op["value"], "base": base, "index": index, "zp": zp}
        else:
            text = f"{op['mnemonic']} {h4(base)},{reg}"
            q = pick(rng, f"How many cycles does `{text}` take when {reg} = {h2(index)}?",
                     f"With {reg} = {h2(index)}, what does `{text}` cost in cycles?",
                     f"Count the cycles for `{text}` if the {reg} register holds {index}.")
            addr_step = pick(rng, f"Effective address: {h4(base)} + {h2(index)} = {h4(ea)}.",
                             f"{h4(base)} plus {reg} = {h2(index)} is {h4(ea)}.")
            params = {"opcode": op["value"], "base": base, "index": index}
        page_step = (f"The high byte changes from {h2(base >> 8)} to {h2(ea >> 8)}, so a page boundary is crossed."
                     if crossed else f"The high byte stays {h2(base >> 8)}: same page.")
        if has_page_penalty(op):
            total = op["cycles"] + (1 if crossed else 0)
            rule = (f"The table lists {op['cycles']} cycles +1 on a page crossing"
                    + (f", so {op['cycles']} + 1 = {total}." if crossed else f", so it stays {total}."))
        else:
            total = op["cycles"]
            rule = pick(rng, f"The table gives a fixed {total} cycles with no page-crossing penalty for "
                             f"{op['mnemonic']} in this mode (stores and read-modify-write always take the extra cycle).",
                        f"{op['syntax']} has no +1 penalty in the table: always {total} cycles.")
        r = join_sentences(addr_step, page_step, rule)
        a = f"{total} cycles (effective address {h4(ea)}, {'page crossed' if crossed else 'same page'})."
        yield Example(TABLE, "cycles_indexed", f"opcodes:{op['opcode']}", q, r, a, params)


def zero_page_wrap(tables, rng):
    cands = [op for op in ops(tables) if op["mode_code"] in ("a8,X", "a8,Y", "(a8,X)") and not op.get("jams_cpu")]
    while True:
        op = rng.choice(cands)
        zp = rng.randrange(0x80, 0x100)
        index = rng.randrange(0x100 - zp, 0x100) if rng.random() < 0.7 else rng.randrange(0, 0x100 - zp)
        eff = (zp + index) & 0xFF
        reg = "Y" if op["mode_code"] == "a8,Y" else "X"
        if op["mode_code"] == "(a8,X)":
            text = f"{op['mnemonic']} (${zp:02X},X)"
            q = pick(rng, f"For `{text}` with X = {h2(index)}, from which zero-page bytes is the pointer read?",
                     f"X = {h2(index)}. Where does `{text}` fetch its pointer, and how many cycles does it take?")
            r = join_sentences(f"The pointer address is ${zp:02X} + {h2(index)} = ${zp + index:03X}, but zero-page "
                               f"indexing drops the carry, so it is ${eff:02X}.",
                               f"The low byte comes from ${eff:02X} and the high byte from ${(eff + 1) & 0xFF:02X}.",
                               f"The table gives {op['cycles']} cycles with no page penalty for this mode.")
            a = (f"The pointer is read from ${eff:02X}/${(eff + 1) & 0xFF:02X} (the sum wraps within zero page); "
                 f"{op['cycles']} cycles.")
        else:
            text = f"{op['mnemonic']} ${zp:02X},{reg}"
            q = pick(rng, f"With {reg} = {h2(index)}, which address does `{text}` access?",
                     f"`{text}` runs with {reg} = {index}. Which memory location is used, and how many cycles?")
            r = join_sentences(pick(rng, f"${zp:02X} + {h2(index)} = ${zp + index:02X}.",
                                    f"Adding {reg} to ${zp:02X} gives ${zp + index:02X}."),
                               ("Zero-page indexed addressing keeps only the low byte, so the access wraps to "
                                f"${eff:02X} instead of leaving page zero." if zp + index > 0xFF else
                                "No wrap is needed, the sum stays in page zero."),
                               f"Timing from the table: {op['cycles']} cycles, no page penalty in zero page.")
            a = f"It accesses ${eff:02X}" + (" (wrapped within zero page)" if zp + index > 0xFF else "") + \
                f"; {op['cycles']} cycles."
        yield Example(TABLE, "zero_page_wrap", f"opcodes:{op['opcode']}", q, r, a,
                      {"opcode": op["value"], "zp": zp, "index": index})


def _branch_condition(op: dict) -> tuple[str, int]:
    # "Branch on Z = 0" -> ("Z", 0)
    text = op["operation"]
    flag, value = text.split("Branch on ", 1)[1].split(" = ")
    return flag.strip(), int(value.strip()[0])


def branch(tables, rng):
    cands = [op for op in ops(tables) if op.get("category") == "bra"]
    while True:
        op = rng.choice(cands)
        flag, want = _branch_condition(op)
        at = rng.randrange(0x0800, 0xCFF0)
        if rng.random() < 0.5:
            at = (at & 0xFF00) | rng.randrange(0xE0, 0xFE)
        offset = rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0x100)])
        state = rng.randrange(2)
        nxt = at + 2
        signed = offset - 256 if offset >= 0x80 else offset
        target = (nxt + signed) & 0xFFFF
        taken = state == want
        crossed = taken and (nxt >> 8) != (target >> 8)
        cycles = 2 + (1 if taken else 0) + (1 if crossed else 0)
        q = pick(rng, f"A {op['mnemonic']} at {h4(at)} has the offset byte {h2(offset)} and the {flag} flag is {state}. "
                      f"Where does execution continue, and how many cycles does the branch take?",
                 f"{op['mnemonic']} {h2(offset)} sits at {h4(at)}; {flag} = {state}. Next PC and cycle count?",
                 f"Trace `{op['mnemonic']}` at address {h4(at)} with offset {h2(offset)} when {flag} is {state}.")
        steps = [f"{op['mnemonic']} branches when {flag} = {want}; here {flag} = {state}, so the branch is "
                 f"{'taken' if taken else 'not taken'}."]
        if taken:
            steps.append(f"The offset is relative to the next instruction at {h4(at)} + 2 = {h4(nxt)}; "
                         f"{h2(offset)} as a signed byte is {signed}, so the target is {h4(target)}.")
            steps.append(f"From {h4(nxt)} to {h4(target)} the page "
                         + (f"changes ({h2(nxt >> 8)} to {h2(target >> 8)}), so 2 + 1 + 1 = 4 cycles." if crossed else
                            "stays the same, so 2 + 1 = 3 cycles."))
            a = f"The branch is taken to {h4(target)}; {cycles} cycles" + (" (page crossed)." if crossed else ".")
        else:
            steps.append(f"Execution falls through to {h4(nxt)} after the base 2 cycles.")
            a = f"Not taken: execution continues at {h4(nxt)} after 2 cycles."
        r = join_sentences(*steps)
        yield Example(TABLE, "branch", f"opcodes:{op['opcode']}", q, r, a,
                      {"opcode": op["value"], "at": at, "offset": offset, "flag": flag, "state": state})


def flags(tables, rng):
    by_mnem: dict[str, dict] = {}
    for op in ops(tables):
        if op["documented"]:
            by_mnem.setdefault(op["mnemonic"], op)
    names = sorted(by_mnem)
    rng.shuffle(names)
    for m in names:
        op = by_mnem[m]
        f = op.get("flags") or {}
        q = pick(rng, f"Which processor status flags does {m} change?", f"What does {m} do to the flags N, V, D, I, Z and C?",
                 f"After a {m}, which flags may differ from before?")
        modified = [k for k, v in f.items() if v == "modified"]
        set_ = [k for k, v in f.items() if v == "set"]
        cleared = [k for k, v in f.items() if v == "cleared"]
        parts = []
        if modified:
            parts.append(f"{listing([FLAG_NAMES[k] for k in modified])} {'is' if len(modified) == 1 else 'are'} "
                         f"set according to the result")
        if set_:
            parts.append(f"{listing([FLAG_NAMES[k] for k in set_])} always set to 1")
        if cleared:
            parts.append(f"{listing([FLAG_NAMES[k] for k in cleared])} always cleared to 0")
        r = join_sentences(f"The flags column for {m} reads {op['flags_string']} in the order N V - B D I Z C.",
                           "A letter or * means the flag follows the result, 1 means set, 0 means cleared, - unchanged.",
                           f"Operation: {op['operation']}.")
        a = (f"{m}: " + "; ".join(parts) + "; all other flags unchanged." if parts else
             f"{m} changes no flags.")
        yield Example(TABLE, "flags", f"opcodes:mnemonic:{m}", q, r, a, {"mnemonic": m})


def _fixed_time_ops(tables):
    return [op for op in unique_syntax_ops(tables)
            if op["documented"] and op["category"] != "bra" and not has_page_penalty(op)
            and op["mnemonic"] not in ("BRK", "JMP", "JSR", "RTS", "RTI")]


def sequence_cycles(tables, rng):
    cands = _fixed_time_ops(tables)
    while True:
        chosen = [rng.choice(cands) for _ in range(rng.randrange(2, 5))]
        lines, byts, cyc = [], 0, 0
        steps = []
        for op in chosen:
            text, _ = operand_example(op, rng)
            lines.append(text)
            byts += op["bytes"]
            cyc += op["cycles"]
            steps.append(pick(rng, f"`{text}` is {op['addressing_mode']}: {plural(op['bytes'], 'byte')}, {op['cycles']} cycles.",
                              f"`{text}` ({op['opcode']}) - {op['cycles']} cycles, {plural(op['bytes'], 'byte')}.",
                              f"{op['syntax']} costs {op['cycles']} cycles and takes {plural(op['bytes'], 'byte')}."))
        code = "\n".join(f"    {t}" for t in lines)
        q = pick(rng, f"How many bytes and cycles does this sequence take?\n{code}",
                 f"Count bytes and CPU cycles:\n{code}",
                 f"What is the size and the execution time in cycles of\n{code}")
        r = join_sentences(*steps, f"Totals: {' + '.join(str(o['bytes']) for o in chosen)} = {byts} bytes and "
                                   f"{' + '.join(str(o['cycles']) for o in chosen)} = {cyc} cycles.")
        a = f"{byts} bytes, {cyc} cycles."
        yield Example(TABLE, "sequence_cycles", "opcodes:sequence:" + "|".join(o["opcode"] for o in chosen), q, r, a,
                      {"opcodes": [o["value"] for o in chosen], "lines": lines})


def loop_cycles(tables, rng):
    by_syntax = {op["syntax"]: op for op in ops(tables) if op["documented"]}
    ldx, dex, bne = by_syntax["LDX #$nn"], by_syntax["DEX"], by_syntax["BNE $nnnn"]
    body_cands = [op for op in _fixed_time_ops(tables) if op["mnemonic"] not in ("LDX", "DEX", "INX", "TAX", "TSX", "TXS")
                  and op["mode_code"] not in ("a8,X", "(a8,X)") and "X" not in op["syntax"].split()[-1]]
    body_cands += [by_syntax["STA $nnnn,X"]]
    while True:
        n = rng.randrange(2, 256)
        body = [rng.choice(body_cands) for _ in range(rng.randrange(1, 3))]
        body_lines = [operand_example(op, rng)[0] for op in body]
        body_cyc = sum(op["cycles"] for op in body)
        per_iter = body_cyc + dex["cycles"]
        body_sum = " + ".join(f"{op['cycles']} ({t})" for op, t in zip(body, body_lines))
        taken, fallthrough = bne["cycles"] + 1, bne["cycles"]     # 2+t+p: +1 when taken, same page assumed
        total = ldx["cycles"] + n * per_iter + (n - 1) * taken + fallthrough
        code = "\n".join([f"        LDX #${n:02X}", "loop:   " + body_lines[0]] +
                         [f"        {t}" for t in body_lines[1:]] + ["        DEX", "        BNE loop"])
        q = pick(rng, f"How many cycles does this loop take in total (the branch stays within one page)?\n{code}",
                 f"Cycle-count the whole loop, assuming no page crossing on the branch:\n{code}")
        r = join_sentences(
            f"LDX #${n:02X} takes {ldx['cycles']} cycles and sets X = {n}, so the body runs {n} times.",
            f"Body: {body_sum} + {dex['cycles']} (DEX) "
            f"= {per_iter} cycles per pass, {n} x {per_iter} = {n * per_iter}.",
            f"BNE is taken {n - 1} times at {taken} cycles ({fallthrough} + 1 taken, same page) = {(n - 1) * taken}, "
            f"and falls through once at {fallthrough} cycles.",
            f"Total: {ldx['cycles']} + {n * per_iter} + {(n - 1) * taken} + {fallthrough} = {total}.")
        a = f"{total} cycles."
        yield Example(TABLE, "loop_cycles", "opcodes:loop:" + "|".join(o["opcode"] for o in body), q, r, a,
                      {"count": n, "body": [o["value"] for o in body]})


def undocumented(tables, rng):
    table = [op for op in ops(tables) if not op["documented"]]
    rng.shuffle(table)
    for op in table:
        code = op["opcode"]
        q = pick(rng, f"Is {code} a legal 6502 opcode? What does it do?",
                 f"What happens when the 6510 executes the undocumented opcode {code}?",
                 f"Some demo code uses the byte {code} as an instruction. What is it?")
        names = f" Other names: {op['other_names']}." if op.get("other_names") else ""
        if op.get("jams_cpu"):
            r = join_sentences(f"The opcode table marks {code} as undocumented: {op['mnemonic']}, {op['name']}.",
                               f"Operation: {op['operation']}.{names}")
            a = f"No. {code} is the undocumented {op['mnemonic']}: it halts the CPU until a reset."
        else:
            r = join_sentences(f"The opcode table marks {code} as undocumented: {op['syntax']}, {op['name']}.",
                               f"Operation: {op['operation']}.{names}",
                               f"{op['addressing_mode']} mode, {plural(op['bytes'], 'byte')}, {timing_text(op)}.")
            a = (f"No, it is undocumented: {code} is {op['syntax']} ({op['name']}); {op['operation']}; "
                 f"{plural(op['bytes'], 'byte')}, {timing_text(op)}.")
        yield Example(TABLE, "undocumented", f"opcodes:{code}", q, r, a, {"opcode": op["value"]})


KINDS = {"decode": decode, "encode": encode, "cycles_indexed": cycles_indexed, "zero_page_wrap": zero_page_wrap,
         "branch": branch, "flags": flags, "sequence_cycles": sequence_cycles, "loop_cycles": loop_cycles,
         "undocumented": undocumented}
