"""SFT questions about BASIC V2 tokens, tokenised program lines and error numbers, from basic_tokens.json."""
from __future__ import annotations

from data.basic_crunch import keyword_table, line_bytes
from data.reference_tables import h2, h4, parse_hex
from data.sft_example import Example, join_sentences, pick

TABLE = "basic_tokens"

# Statement shapes for generated program lines; {n}, {a}, {v}, {s} are filled at random.
LINE_SHAPES = (
    'PRINT "{s}"', "POKE {a},{n}", "FOR I=1 TO {n}", "NEXT I", "GOTO {line}", "GOSUB {line}", "RETURN",
    "IF {v}={n} THEN {line}", "SYS {a}", "{v}=PEEK({a})", "PRINT CHR$({n})", "A$=LEFT$(B$,{n})", "REM {s}",
    "DATA {n},{n2},{n3}", "GET A$", "INPUT {v}", "END", "SCORE=SCORE+{n}", "TOTAL={n}", "?{v}", "{v}={v}*2+1",
    "POKE 53280,{c}:POKE 53281,{c2}", "FOR J=0 TO {n} STEP 2", "PRINT {v};", "ON {v} GOTO {line},{line2}",
    "CLR", "X=RND(1)*{n}", "WAIT 198,1", "PRINT TAB({n2});\"*\"", "S=S+ABS({v})", "STOP", "LIST", "NEW",
)
WORDS = ("HELLO", "C64", "READY", "SCORE", "GAME OVER", "HI", "MUSIC", "LOADING")


def tokens(tables) -> list[dict]:
    return tables[TABLE]["tokens"]


def keyword_token(tables, rng):
    items = list(tokens(tables))
    for _ in range(3):
        rng.shuffle(items)
        for t in items:
            kw = t["keyword"]
            q = pick(rng, f"Which token byte does BASIC V2 store for {kw}?", f"What is the token of the keyword {kw}?",
                     f"When I type {kw} in a program line, which byte ends up in memory?")
            index = t["value"] - 0x80
            r = join_sentences(f"The keyword table assigns tokens from $80 upwards in table order; {kw} is entry "
                               f"{index}, so its token is $80 + {index} = {t['token']} ({t['value']}).",
                               f"It is a {t['kind']}" + (f", handled at {t['handler']}." if t.get("handler") else "."))
            a = f"{kw} is stored as the token {t['token']} ({t['value']})."
            yield Example(TABLE, "keyword_token", f"basic:{t['token']}", q, r, a, {"keyword": kw})


def token_keyword(tables, rng):
    items = list(tokens(tables))
    for _ in range(3):
        rng.shuffle(items)
        for t in items:
            shown = pick(rng, t["token"], str(t["value"]))
            q = pick(rng, f"Which BASIC keyword is the token {shown}?", f"Detokenise the byte {shown} in a BASIC line.",
                     f"A BASIC program in memory contains {shown} outside quotes. What does LIST print for it?")
            r = join_sentences(f"{shown} = {t['token']}." if shown.isdigit() else "",
                               f"Tokens start at $80: {t['value']} - 128 = {t['value'] - 128}, entry "
                               f"{t['value'] - 128} of the keyword table, which is {t['keyword']}.",
                               f"Kind: {t['kind']}.")
            a = f"{t['token']} ({t['value']}) is {t['keyword']}."
            yield Example(TABLE, "token_keyword", f"basic:{t['token']}", q, r, a, {"token": t["value"]})


def _random_line(rng) -> str:
    def fill(shape: str) -> str:
        return shape.format(n=rng.choice([rng.randrange(1, 10), rng.randrange(10, 256)]), n2=rng.randrange(0, 40),
                            n3=rng.randrange(0, 256), a=rng.choice([53280, 53281, 1024, 49152, 646, 198, 54296]),
                            v=rng.choice("ABXYNK"), s=rng.choice(WORDS), line=rng.randrange(1, 100) * 10,
                            line2=rng.randrange(1, 100) * 10, c=rng.randrange(16), c2=rng.randrange(16))
    parts = [fill(rng.choice(LINE_SHAPES))]
    if rng.random() < 0.35 and not parts[0].startswith(("REM", "DATA")):
        parts.append(fill(rng.choice([s for s in LINE_SHAPES if not s.startswith("IF")])))
    return ":".join(parts)


def tokenise_line(tables, rng):
    keywords = keyword_table(tables)
    while True:
        body = _random_line(rng)
        number = rng.choice([rng.randrange(0, 100), rng.randrange(1, 640) * 10, rng.randrange(0, 64000)])
        stored, pieces = line_bytes(number, body, keywords)
        if len(stored) > 28:
            continue
        first_line = rng.random() < 0.5
        typed = f"{number} {body}"
        q = pick(rng, f"How does BASIC store the line `{typed}` in memory (after the link pointer)?",
                 f"Tokenise `{typed}` into the bytes BASIC keeps for it.",
                 f"Which bytes does the C64 store for the program line `{typed}`?")
        if first_line:
            q += " It is the first line of a program starting at $0801; give the link pointer too."
        steps = [f"The line number {number} = {h4(number)} is stored low byte first: {h2(number & 0xFF)} {h2(number >> 8)}."]
        runs, literal = [], ""
        for p in pieces:
            if p.token:
                if literal:
                    runs.append(f"\"{literal}\" as characters")
                    literal = ""
                runs.append(f"{p.text} -> {h2(p.byte)}" + (" (PRINT)" if p.text == "?" else ""))
            else:
                literal += p.text
        if literal:
            runs.append(f"\"{literal}\" as characters")
        steps.append("Outside quotes keywords become tokens, the rest stays as PETSCII: " + "; ".join(runs) + ".")
        if "REM" in [p.text for p in pieces if p.token] or "DATA" in [p.text for p in pieces if p.token]:
            steps.append("After REM (to the end of the line) or DATA (to the next colon) nothing is tokenised.")
        steps.append("A $00 byte ends the line.")
        body_hex = " ".join(f"{b:02X}" for b in stored)
        answer = body_hex
        if first_line:
            nxt = 0x0801 + 2 + len(stored)
            steps.append(f"Length with the 2-byte link: 2 + {len(stored)} = {len(stored) + 2}, so the next line starts at "
                         f"$0801 + {len(stored) + 2} = {h4(nxt)}; that address is the link, stored {h2(nxt & 0xFF)} "
                         f"{h2(nxt >> 8)}.")
            answer = f"link {nxt & 0xFF:02X} {nxt >> 8:02X}, then {body_hex}"
        r = join_sentences(*steps)
        a = f"{answer} ({len(stored) + (2 if first_line else 0)} bytes)."
        yield Example(TABLE, "tokenise_line", f"basic:line:{body}", q, r, a,
                      {"number": number, "body": body, "first_line": first_line})


def error_number(tables, rng):
    items = list(tables[TABLE]["errors"])
    for _ in range(4):
        rng.shuffle(items)
        for err in items:
            msg = err["message"]
            short = msg[:-len(" ERROR")] if msg.endswith(" ERROR") else msg
            if rng.random() < 0.5:
                q = pick(rng, f"Which error number belongs to the message {short}?",
                         f"What is the BASIC error code of {msg}?")
            else:
                q = pick(rng, f"BASIC's error handler is entered with X = {err['number']}. Which message appears?",
                         f"Which message is BASIC error number {err['number']}?")
            r = join_sentences(f"The error table lists number {err['number']} ({h2(err['number'])}) as \"{msg}\", "
                               f"with its text at {err['text_address']}.",
                               "The number is the value in X when the error handler at $A437 is called.")
            shown = f"?{msg}" if msg.endswith(" ERROR") else msg
            a = f"Error {err['number']} ({h2(err['number'])}) is {shown}."
            yield Example(TABLE, "error_number", f"basic:error:{err['number']}", q, r, a, {"number": err["number"]})


def dispatch(tables, rng):
    items = [t for t in tokens(tables) if t["kind"] == "statement" and t.get("handler")]
    for _ in range(3):
        rng.shuffle(items)
        for t in items:
            h = parse_hex(t["handler"])
            stored = h - 1
            q = pick(rng, f"Where is the handler of the BASIC statement {t['keyword']}, and what does the statement "
                          f"dispatch table hold for it?",
                     f"{t['keyword']} ({t['token']}): which address runs it and which bytes are in the dispatch table?")
            r = join_sentences(f"{t['keyword']} is token {t['token']}, a statement whose handler is at {t['handler']}.",
                               "Statement handlers are reached by pushing address-1 and executing RTS, which adds 1.",
                               f"So the table holds {t['handler']} - 1 = {h4(stored)}, low byte first: "
                               f"{h2(stored & 0xFF)} {h2(stored >> 8)}.")
            a = f"{t['keyword']} runs at {t['handler']}; the dispatch table stores {h4(stored)} ({h2(stored & 0xFF)} {h2(stored >> 8)})."
            yield Example(TABLE, "dispatch", f"basic:{t['token']}", q, r, a, {"keyword": t["keyword"]})


KINDS = {"keyword_token": keyword_token, "token_keyword": token_keyword, "tokenise_line": tokenise_line,
         "error_number": error_number, "dispatch": dispatch}
