"""SFT questions on SID oscillator frequencies, from sid_note_frequencies.json (Fout = Fn * Fclk / 2^24)."""
from __future__ import annotations

from data.reference_tables import h2, h4
from data.sft_example import Example, join_sentences, pick

TABLE = "sid_note_frequencies"
TWO_24 = 16777216
VOICE_BASE = 0xD400
VOICE_STRIDE = 7          # each voice has 7 registers: FRELO, FREHI, PWLO, PWHI, control, AD, SR


def notes(tables) -> list[dict]:
    return tables[TABLE]["notes_table"]


def clocks(tables) -> dict[str, int]:
    return tables[TABLE]["clock_hz"]


def pitch(note: dict) -> float:
    """Exact equal-tempered frequency (A4 = MIDI 69 = 440 Hz); the table's frequency_hz is this rounded
    to 3 decimals, which is not precise enough to reproduce every register value."""
    return 440.0 * 2 ** ((note["midi"] - 69) / 12)


def note_to_value(tables, rng):
    items = [(n, system) for n in notes(tables) for system in ("pal", "ntsc")]
    for _ in range(3):
        rng.shuffle(items)
        for n, system in items:
            clock = clocks(tables)[system]
            voice = rng.randrange(1, 4)
            lo_reg = VOICE_BASE + VOICE_STRIDE * (voice - 1)
            hz = pitch(n)
            exact = hz * TWO_24 / clock
            value = n[f"{system}_dec"]
            if (value if value is not None else 0x10000) != (round(exact) if round(exact) <= 0xFFFF else 0x10000):
                continue        # never state a computation that disagrees with the table
            sysname = system.upper()
            q = pick(rng, f"What frequency value plays {n['note']} on SID voice {voice} of a {sysname} C64, and which "
                          f"registers get it?",
                     f"Compute the SID register value for the note {n['note']} ({n['frequency_hz']} Hz) on {sysname}, "
                     f"voice {voice}.",
                     f"{sysname} machine, voice {voice}: which two bytes do I POKE to play {n['note']}?")
            steps = [pick(rng, f"{n['note']} is MIDI note {n['midi']}: 440 * 2^(({n['midi']} - 69)/12) = {hz:.4f} Hz.",
                          f"Equal temperature from A4 = 440 Hz: {n['note']} = 440 * 2^({n['midi'] - 69}/12) = {hz:.4f} Hz.",
                          f"Target pitch: {n['note']}, {n['midi'] - 69} semitones from A4, so {hz:.4f} Hz."),
                     pick(rng, f"SID: Fout = Fn * Fclk / 2^24, so Fn = Fout * 16777216 / Fclk with the {sysname} clock "
                               f"{clock} Hz.",
                          f"Solve Fout = Fn * Fclk / 16777216 for Fn, using Fclk = {clock} Hz ({sysname}).",
                          f"The register value is Fout * 2^24 / Fclk; {sysname} runs at {clock} Hz."),
                     f"{hz:.4f} * 16777216 / {clock} = {exact:.2f}."]
            if value is None:
                steps.append(f"That is above 65535, the largest 16-bit value, so the note cannot be played on {sysname}.")
                a = f"It does not fit: {n['note']} needs {exact:.0f} on {sysname}, more than the 16-bit maximum 65535."
            else:
                lo, hi = value & 0xFF, value >> 8
                steps.append(f"Rounded: {value} = {h4(value)}; low byte {h2(lo)} ({lo}), high byte {h2(hi)} ({hi}).")
                steps.append(f"Voice {voice}'s frequency registers start at $D400 + 7*{voice - 1} = {h4(lo_reg)} "
                             f"(low) and {h4(lo_reg + 1)} (high).")
                a = (f"{value} ({h4(value)}): {h2(lo)} to {h4(lo_reg)}, {h2(hi)} to {h4(lo_reg + 1)} - "
                     f"POKE {lo_reg},{lo}:POKE {lo_reg + 1},{hi}.")
            r = join_sentences(*steps)
            yield Example(TABLE, "note_to_value", f"sid:{n['note']}", q, r, a,
                          {"note": n["note"], "system": system, "voice": voice})


def value_to_hz(tables, rng):
    table = [n for n in notes(tables)]
    while True:
        system = rng.choice(("pal", "ntsc"))
        clock = clocks(tables)[system]
        near = rng.choice(table)
        base = near[f"{system}_dec"] or 60000
        value = max(1, min(0xFFFF, base + rng.randrange(-base // 40 - 1, base // 40 + 2)))
        hz = value * clock / TWO_24
        closest = min(table, key=lambda n: abs(n["frequency_hz"] - hz))
        sysname = system.upper()
        q = pick(rng, f"Voice 1 on a {sysname} C64 has {h4(value)} in $D400/$D401. What pitch does it play?",
                 f"What frequency in Hz does the SID value {value} give on {sysname}, and which note is nearest?")
        r = join_sentences(f"Fout = Fn * Fclk / 16777216 with Fn = {value} ({h4(value)}) and the {sysname} clock {clock} Hz.",
                           f"{value} * {clock} / 16777216 = {hz:.2f} Hz.",
                           f"The nearest note in the equal-tempered table is {closest['note']} at {closest['frequency_hz']} Hz.")
        a = f"About {hz:.2f} Hz, closest to {closest['note']} ({closest['frequency_hz']} Hz)."
        yield Example(TABLE, "value_to_hz", f"sid:{closest['note']}", q, r, a, {"value": value, "system": system})


def pal_to_ntsc(tables, rng):
    items = [n for n in notes(tables) if n["pal_dec"] is not None and n["ntsc_dec"] is not None]
    for _ in range(3):
        rng.shuffle(items)
        for n in items:
            pal, ntsc = clocks(tables)["pal"], clocks(tables)["ntsc"]
            to_ntsc = rng.random() < 0.5
            src, dst = ("pal", "ntsc") if to_ntsc else ("ntsc", "pal")
            q = pick(rng, f"A tune uses {n[src]} for {n['note']} on {src.upper()}. Which value plays the same note on "
                          f"{dst.upper()}?",
                     f"Convert the {src.upper()} SID frequency value for {n['note']} ({n[src]}) to {dst.upper()}.")
            dst_clock = ntsc if to_ntsc else pal
            hz = pitch(n)
            if round(hz * TWO_24 / dst_clock) != n[dst + "_dec"]:
                continue
            r = join_sentences(f"{n[src]} is the table value for {n['note']} ({hz:.4f} Hz) on {src.upper()}.",
                               "The register value depends on the clock: Fn = Fout * 16777216 / Fclk.",
                               f"With the {dst.upper()} clock {dst_clock} Hz: {hz:.4f} * 16777216 / "
                               f"{dst_clock} = {hz * TWO_24 / dst_clock:.2f}, rounded "
                               f"{n[dst + '_dec']} = {n[dst]}.",
                               "The NTSC clock is faster, so NTSC values are smaller." if to_ntsc else
                               "The PAL clock is slower, so PAL values are larger.")
            a = f"{n[dst]} ({n[dst + '_dec']}) on {dst.upper()}."
            yield Example(TABLE, "pal_to_ntsc", f"sid:{n['note']}", q, r, a, {"note": n["note"], "to": dst})


KINDS = {"note_to_value": note_to_value, "value_to_hz": value_to_hz, "pal_to_ntsc": pal_to_ntsc}
