"""Render the JSON reference tables as readable text documents for DAPT.

The model never sees JSON at inference time, so the tables are written the way a reference book
would print them: one block per entry, address/opcode first, the facts in a fixed order, then each
source's own description verbatim (line breaks kept).
"""
from __future__ import annotations

from data.reference_tables import SOURCE_TITLES, clean_symbols


def _descriptions(entry: dict, name_key: str = "symbol") -> list[str]:
    out = []
    for d in entry.get("descriptions", []):
        heading = (d.get("heading") or "").strip()
        text = (d.get("text") or "").strip("\n")
        if not heading and not text.strip():
            continue
        title = SOURCE_TITLES.get(d.get("source"), d.get("source") or "source")
        out.append(f"  [{title}] {heading}".rstrip())
        if text.strip():
            out.append(text)
    return out


def render_opcodes(t: dict) -> str:
    lines = ["NMOS 6502/6510 opcode table", "",
             f"Flag order in the flags column: {t.get('flag_order', 'N V - B D I Z C')}.", ""]
    for m in t.get("addressing_modes", []):
        lines.append(f"Addressing mode {m['name']}: operand syntax {m['syntax']}, {m['bytes']} byte(s) in total.")
    lines.append("")
    for op in t["opcodes"]:
        status = "documented" if op.get("documented") else "undocumented"
        if op.get("jams_cpu"):
            timing = "jams the CPU"
        else:
            timing = f"{op.get('cycles')} cycles" + "".join(f", {x}" for x in op.get("cycles_extra") or [])
        lines.append(f"{op['opcode']}  {op['syntax']}  ({op['name']}; {status}; {op['addressing_mode']}; "
                     f"{op['bytes']} bytes; {timing})")
        lines.append(f"  Operation: {op.get('operation')}.  Flags NV-BDIZC: {op.get('flags_string')}")
        if op.get("other_names"):
            lines.append(f"  Other names: {op['other_names']}")
        if op.get("description"):
            lines.append(f"  {op['description']}")
        lines.append("")
    return "\n".join(lines)


def _render_ranges(title: str, t: dict) -> str:
    lines = [title, ""]
    if t.get("notes"):
        lines += [t["notes"], ""]
    for e in t["entries"]:
        span = f"{e['start']}" if e["start"] == e["end"] else f"{e['start']}-{e['end']}"
        symbols = ", ".join(clean_symbols(e))
        lines.append(f"{e['address']} ({span})" + (f"  {symbols}" if symbols else ""))
        lines += _descriptions(e)
        lines.append("")
    return "\n".join(lines)


def render_memory_map(t: dict) -> str:
    return _render_ranges("Commodore 64 memory map", t)


def render_io_registers(t: dict) -> str:
    return _render_ranges("Commodore 64 I/O registers", t)


def render_kernal_api(t: dict) -> str:
    lines = ["Commodore 64 KERNAL jump table", ""]
    labels = (("summary", "Summary"), ("communication_registers", "Communication registers"),
              ("input", "Input"), ("output", "Output"), ("preparatory_routines", "Preparatory routines"),
              ("error_returns", "Error returns"), ("stack_requirements", "Stack requirements"),
              ("registers_affected", "Registers affected"), ("real_address", "Real address"))
    for e in t["entries"]:
        names = "/".join(e.get("names") or []) or "(internal entry)"
        lines.append(f"{e['address']} ({e['value']})  {names}")
        quick = e.get("quick") or {}
        lines += [f"  {label}: {quick[k]}" for k, label in labels if quick.get(k)]
        lines += _descriptions(e)
        lines.append("")
    return "\n".join(lines)


def render_basic_tokens(t: dict) -> str:
    lines = ["Commodore 64 BASIC V2 tokens", ""]
    if t.get("notes"):
        lines += [t["notes"], ""]
    for tok in t["tokens"]:
        extra = f", handler {tok['handler']}" if tok.get("handler") else ""
        lines.append(f"{tok['token']} ({tok['value']})  {tok['keyword']}  {tok['kind']}{extra}")
    lines += ["", "BASIC error messages (number: message)"]
    lines += [f"{e['number']}: {e['message']}" for e in t.get("errors", [])]
    return "\n".join(lines) + "\n"


def render_sid_note_frequencies(t: dict) -> str:
    clock = t.get("clock_hz", {})
    lines = ["SID note frequency table", "", t.get("notes", ""),
             f"Formula: {t.get('source', {}).get('formula', '')}",
             f"Clocks: PAL {clock.get('pal')} Hz, NTSC {clock.get('ntsc')} Hz", "",
             "note  MIDI  Hz         PAL value      NTSC value"]
    for n in t["notes_table"]:
        pal = f"{n['pal']} ({n['pal_dec']})" if n.get("pal") else "out of range"
        ntsc = f"{n['ntsc']} ({n['ntsc_dec']})" if n.get("ntsc") else "out of range"
        lines.append(f"{n['note']:<5} {n['midi']:<5} {n['frequency_hz']:<10} {pal:<14} {ntsc}")
    return "\n".join(lines) + "\n"


def render_keyboard_petscii(t: dict) -> str:
    lines = ["Commodore 64 keyboard matrix, PETSCII control codes and colour palette", ""]
    if t.get("notes"):
        lines += [t["notes"], ""]
    lines.append("scancode  key  CIA1 PA bit  CIA1 PB bit  plain  SHIFT  C=  CTRL")
    for k in t["keys"]:
        codes = "  ".join(str(k.get(x) or "-") for x in ("regular", "shift", "cbm", "ctrl"))
        lines.append(f"{k['scancode_hex']}  {k['key']}  {k['cia1_pa_bit']}  {k['cia1_pb_bit']}  {codes}")
    lines += ["", "PETSCII control codes"]
    lines += [f"{c['code']} ({c['value']})  {c['name']}" for c in t.get("control_codes", [])]
    lines += ["", "Colour palette"]
    lines += [f"{p['index']}  {p['name']}  {p['rgb']}" for p in t.get("palette", [])]
    return "\n".join(lines) + "\n"


RENDERERS = {
    "opcodes": render_opcodes, "memory_map": render_memory_map, "io_registers": render_io_registers,
    "kernal_api": render_kernal_api, "basic_tokens": render_basic_tokens,
    "sid_note_frequencies": render_sid_note_frequencies, "keyboard_petscii": render_keyboard_petscii,
}


def render(name: str, table: dict) -> str:
    return RENDERERS[name](table)
