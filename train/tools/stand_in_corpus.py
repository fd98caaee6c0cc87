"""Generic pretraining material for the stand-in model (library of train/tools/tiny_model.py).

The real Ministral 3 Reasoning arrives already answering `[THINK]reasoning[/THINK]answer</s>`; the stand-in must
too, without knowing anything about the C64. So everything here is generated from our own word lists and
templates: arithmetic, word and logic questions, each answered in the reasoning contract, and short paragraphs
of everyday prose. Nothing is about the C64, and nothing is copied from any text.

The conversations run under the stand-in system prompt, half of the time followed by an extra paragraph that
gives the assistant a field of expertise (gardening, cooking, ...), shaped like the C64 specialization the
fine-tuning data appends: the real model follows any system prompt, so the stand-in must not depend on
seeing exactly its own. Most conversations have more than one turn: the model learns that each turn has its
own [THINK]...[/THINK], and the long system prompt, which costs as much to run as several turns, is shared.

Everything is a pure function of the seed. GENERATOR_VERSION goes into the stand-in's recipe stamp: bump it
whenever the generated material changes, so cached stand-ins are rebuilt.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from contract.prompt import SEPARATOR, STAND_IN_SYSTEM_PROMPT
from contract.reasoning import validate_text

GENERATOR_VERSION = 1

Question = tuple[str, str, str]          # (question, reasoning, answer)
TURN_WEIGHTS = (40, 25, 20, 15)          # how often a conversation has 1, 2, 3 or 4 turns

NAMES = ("Anna", "Ben", "Cleo", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Leo", "Maya",
         "Nils", "Olga", "Paul", "Rosa", "Sami", "Tara", "Ugo", "Vera", "Wim", "Yara", "Zoe")
THINGS = ("apples", "books", "stamps", "marbles", "pencils", "shells", "coins", "cards", "buttons", "cups",
          "plates", "keys", "ribbons", "stones", "tickets", "candles")
WORDS = ("garden", "window", "river", "pencil", "yellow", "basket", "summer", "orange", "market", "silver", "candle",
         "forest", "island", "ladder", "button", "kitten", "planet", "rocket", "winter", "bridge", "castle", "flower",
         "guitar", "harbor", "jacket", "lemon", "mirror", "needle", "pepper", "rabbit", "saddle", "tomato", "violin",
         "wallet", "cloud", "table", "chair", "bread", "stone", "light", "music", "paper", "train", "water", "green",
         "horse", "night", "sugar", "tiger", "apple", "beach", "clock", "dream", "house", "lamp", "moon", "road",
         "ship", "tree", "wind", "bird", "fish", "milk", "rain", "snow", "star", "door", "book", "song", "sand")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ANIMALS = ("cats", "dogs", "birds", "fish", "horses", "rabbits", "owls", "foxes", "bees", "frogs")
TRAITS = ("can swim", "have feathers", "like the sun", "sleep at night", "eat seeds", "are green", "can jump",
          "live near water", "are quiet", "are fast")

FIELDS = {
    "gardening": ("soil, seeds and seasons, watering, pruning and the pests of vegetables and flowers",
                  "name the plant and the season; give amounts in grams and litres"),
    "cooking": ("recipes, ingredients, oven temperatures, timing and the chemistry of baking",
                "list the ingredients with their amounts; give times in minutes"),
    "astronomy": ("the planets, the moon and its phases, stars, constellations and telescopes",
                  "give distances with their units; say which hemisphere you mean"),
    "bicycles": ("frames, gears, brakes, tyres and the repairs a rider can do at home",
                 "name the part and the tool; give pressures and sizes with their units"),
    "music": ("scales, chords, rhythm, reading notes and practising an instrument",
              "name the key and the time signature; count beats bar by bar"),
    "weather": ("clouds, wind, rain, pressure and reading a forecast",
                "give temperatures in degrees and wind in kilometres per hour"),
    "chess": ("openings, tactics, endgames and the rules of the game",
              "write moves in algebraic notation; count the material before you judge a position"),
    "bookkeeping": ("budgets, invoices, sums and percentages for a small shop",
                    "show every sum; round money to two decimals only at the end"),
}


# ------------------------------------------------------------------------------------------- arithmetic

def q_add(rng: random.Random) -> Question:
    a, b = rng.randrange(10, 500), rng.randrange(10, 500)
    q = rng.choice((f"What is {a} + {b}?", f"Add {a} and {b}.", f"How much is {a} plus {b}?"))
    r = rng.choice((f"Split the second number: {b} = {b // 10 * 10} + {b % 10}. {a} + {b // 10 * 10} = "
                    f"{a + b // 10 * 10}, then + {b % 10} = {a + b}.",
                    f"Line the numbers up and add: {a} + {b}. The sum is {a + b}. Check by subtracting: "
                    f"{a + b} - {b} = {a}, correct."))
    return q, r, rng.choice((f"{a} + {b} = {a + b}.", f"{a + b}"))


def q_sub(rng: random.Random) -> Question:
    a, b = rng.randrange(50, 900), rng.randrange(1, 50)
    q = rng.choice((f"What is {a} - {b}?", f"Subtract {b} from {a}.", f"How much is {a} minus {b}?"))
    r = (f"Take {b} away from {a}: {a} - {b} = {a - b}. Check: {a - b} + {b} = {a}, which matches, so the "
         f"difference is right.")
    return q, r, rng.choice((f"{a} - {b} = {a - b}.", f"{a - b}"))


def q_mul(rng: random.Random) -> Question:
    a, b = rng.randrange(2, 13), rng.randrange(11, 60)
    q = rng.choice((f"What is {a} times {b}?", f"Multiply {a} by {b}.", f"How much is {a} x {b}?"))
    r = (f"Split {b} into tens and units: {b // 10 * 10} and {b % 10}. {a} x {b // 10 * 10} = {a * (b // 10 * 10)} "
         f"and {a} x {b % 10} = {a * (b % 10)}. Together {a * (b // 10 * 10)} + {a * (b % 10)} = {a * b}.")
    return q, r, rng.choice((f"{a} x {b} = {a * b}.", f"{a * b}"))


def q_div(rng: random.Random) -> Question:
    b, quot, rem = rng.randrange(2, 10), rng.randrange(3, 40), 0
    rem = rng.randrange(0, b)
    a = b * quot + rem
    q = rng.choice((f"What is {a} divided by {b}?", f"Divide {a} by {b}; what is the remainder?",
                    f"How many times does {b} go into {a}?"))
    r = (f"{b} x {quot} = {b * quot}, and {b} x {quot + 1} = {b * (quot + 1)} is more than {a}. So {b} goes into "
         f"{a} {quot} times, leaving {a} - {b * quot} = {rem}.")
    return q, r, f"{quot} remainder {rem}." if rem else f"Exactly {quot}."


def q_compare(rng: random.Random) -> Question:
    a, b = rng.sample(range(10, 1000), 2)
    q = rng.choice((f"Which is larger, {a} or {b}?", f"Is {a} bigger than {b}?", f"Which number is smaller: {a} or {b}?"))
    big, small = max(a, b), min(a, b)
    r = (f"Compare digit counts first: {a} has {len(str(a))} digits, {b} has {len(str(b))}. "
         + (f"Same length, so compare from the left: {big} > {small}." if len(str(a)) == len(str(b))
            else f"More digits means larger: {big} > {small}."))
    if q.startswith("Is "):
        return q, r, "Yes." if a > b else "No."
    return q, r, f"{small}." if "smaller" in q else f"{big}."


def q_sum_list(rng: random.Random) -> Question:
    nums = [rng.randrange(1, 30) for _ in range(rng.randrange(3, 6))]
    q = rng.choice((f"What is the sum of {', '.join(map(str, nums))}?", f"Add up these numbers: {' '.join(map(str, nums))}."))
    steps, total = [], 0
    for n in nums:
        total += n
        steps.append(str(total))
    r = f"Running total: {' -> '.join(steps)}. The last value is the sum."
    return q, r, f"{total}."


def q_sequence(rng: random.Random) -> Question:
    start, step = rng.randrange(1, 50), rng.randrange(2, 12)
    seq = [start + i * step for i in range(4)]
    q = rng.choice((f"What comes next: {', '.join(map(str, seq))}, ...?", f"Continue the sequence {' '.join(map(str, seq))}."))
    r = (f"The differences are {seq[1]} - {seq[0]} = {step}, {seq[2]} - {seq[1]} = {step} and {seq[3]} - {seq[2]} = "
         f"{step}: the sequence grows by {step}. {seq[3]} + {step} = {seq[3] + step}.")
    return q, r, f"{seq[3] + step}."


def q_parity(rng: random.Random) -> Question:
    n = rng.randrange(1, 10000)
    q = rng.choice((f"Is {n} even or odd?", f"Is {n} an even number?"))
    last = n % 10
    r = f"Only the last digit matters: {last} is {'even' if last % 2 == 0 else 'odd'}, so {n} is too."
    if q.startswith("Is " + str(n) + " an"):
        return q, r, "Yes, it is even." if n % 2 == 0 else "No, it is odd."
    return q, r, f"{n} is {'even' if n % 2 == 0 else 'odd'}."


def q_story_count(rng: random.Random) -> Question:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    have, more, give = rng.randrange(3, 40), rng.randrange(2, 30), rng.randrange(1, 10)
    q = f"{name} has {have} {thing}, gets {more} more and gives {give} away. How many {thing} are left?"
    r = f"Start with {have}. After getting {more}: {have} + {more} = {have + more}. After giving {give} away: " \
        f"{have + more} - {give} = {have + more - give}."
    return q, r, f"{name} has {have + more - give} {thing} left."


def q_units(rng: random.Random) -> Question:
    kind = rng.randrange(3)
    if kind == 0:
        h = rng.randrange(1, 12)
        return (f"How many minutes are there in {h} hours?", f"One hour has 60 minutes, so {h} x 60 = {h * 60}.",
                f"{h * 60} minutes.")
    if kind == 1:
        m = rng.randrange(2, 30) * 100
        return (f"How many kilometres are {m} metres?", f"1000 metres make one kilometre: {m} / 1000 = {m / 1000:g}.",
                f"{m / 1000:g} km.")
    w = rng.randrange(1, 9)
    return (f"How many days are in {w} weeks?", f"A week has 7 days: {w} x 7 = {w * 7}.", f"{w * 7} days.")


def q_clock(rng: random.Random) -> Question:
    h, m, add = rng.randrange(0, 24), rng.choice((0, 15, 30, 45, 10, 50)), rng.randrange(20, 200)
    total = h * 60 + m + add
    q = f"It is {h:02d}:{m:02d}. What time is it {add} minutes later?"
    r = (f"{add} minutes = {add // 60} h {add % 60} min. {h:02d}:{m:02d} + {add // 60} h = {(h + add // 60) % 24:02d}:"
         f"{m:02d}, then + {add % 60} min gives {total // 60 % 24:02d}:{total % 60:02d}.")
    return q, r, f"{total // 60 % 24:02d}:{total % 60:02d}."


def q_money(rng: random.Random) -> Question:
    a, b, n = rng.randrange(2, 60), rng.randrange(1, 20), rng.randrange(2, 5)
    thing, other = rng.sample(("book", "pen", "lamp", "cup", "hat", "bag", "map", "kite"), 2)
    q = f"A {thing} costs ${a} and a {other} costs ${b}. How much do {n} {thing}s and one {other} cost?"
    r = f"{n} {thing}s: {n} x ${a} = ${n * a}. Add the {other}: ${n * a} + ${b} = ${n * a + b}."
    return q, r, f"${n * a + b}."


def q_percent(rng: random.Random) -> Question:
    pct, base = rng.choice((10, 20, 25, 50, 75, 5, 15)), rng.randrange(2, 40) * 20
    q = rng.choice((f"What is {pct}% of {base}?", f"How much is {pct} percent of {base}?"))
    r = f"{pct}% means {pct}/100. {base} / 100 = {base / 100:g}, times {pct} = {base * pct / 100:g}."
    return q, r, f"{base * pct / 100:g}."


def q_hex(rng: random.Random) -> Question:
    n = rng.randrange(16, 4096)
    h = f"0x{n:X}" if rng.random() < 0.5 else f"0x{n:04X}"
    digits = f"{n:X}"
    steps = " + ".join(f"{int(d, 16)} x {16 ** (len(digits) - 1 - i)}" for i, d in enumerate(digits))
    if rng.random() < 0.5:
        return (f"What is the hexadecimal number {h} in decimal?",
                f"Each hex digit is worth a power of 16: {steps} = {n}.", f"{h} = {n}.")
    q = f"Write {n} in hexadecimal."
    r = f"Divide by 16 repeatedly: {n} = {n // 16} x 16 + {n % 16}" + (
        f", {n // 16} = {n // 256} x 16 + {n // 16 % 16}" if n >= 256 else "") + f". The digits read {digits}."
    return q, r, f"{n} = 0x{digits}."


def q_binary(rng: random.Random) -> Question:
    n = rng.randrange(2, 256)
    b = f"{n:b}"
    if rng.random() < 0.5:
        return (f"Write {n} in binary.", "Take away the largest powers of two: " + " + ".join(
            str(1 << i) for i in range(len(b) - 1, -1, -1) if n >> i & 1) + f" = {n}, so the bits are {b}.", f"{b}")
    return (f"What is the binary number {b} in decimal?", "Add the place values of the 1 bits: " + " + ".join(
        str(1 << i) for i in range(len(b) - 1, -1, -1) if n >> i & 1) + f" = {n}.", f"{n}.")


def q_expression(rng: random.Random) -> Question:
    a, b, c, d = rng.randrange(2, 20), rng.randrange(2, 20), rng.randrange(2, 6), rng.randrange(1, 5) * 2
    q = f"Evaluate ({a} + {b}) * {c} - {d} / 2."
    r = (f"Brackets first: {a} + {b} = {a + b}. Then * and / from left to right: {a + b} * {c} = {(a + b) * c} and "
         f"{d} / 2 = {d // 2}. Last the subtraction: {(a + b) * c} - {d // 2} = {(a + b) * c - d // 2}.")
    return q, r, f"{(a + b) * c - d // 2}."


def q_variables(rng: random.Random) -> Question:
    x, k, m = rng.randrange(1, 10), rng.randrange(2, 5), rng.randrange(1, 9)
    q = f"After `x = {x}; y = x * {k}; x = y - {m};` runs, what is x?"
    r = f"Line by line: x = {x}. y = {x} * {k} = {x * k}. x = {x * k} - {m} = {x * k - m}. The last assignment wins."
    return q, r, f"x = {x * k - m}."


def q_list_item(rng: random.Random) -> Question:
    items = [rng.randrange(0, 100) for _ in range(rng.randrange(4, 8))]
    i = rng.randrange(len(items))
    q = f"In the list [{', '.join(map(str, items))}], which value is item #{i + 1}?"
    r = "Count from the left: " + ", ".join(f"#{k + 1} = {v}" for k, v in enumerate(items[:i + 1])) + "."
    return q, r, f"{items[i]}."


# ------------------------------------------------------------------------------------------------ words

def q_reverse(rng: random.Random) -> Question:
    w = rng.choice(WORDS)
    q = rng.choice((f"Spell '{w}' backwards.", f"What is '{w}' written in reverse?"))
    r = f"The letters of {w} are {', '.join(w)}. Read from the end: {', '.join(reversed(w))}."
    return q, r, f"{w[::-1]}"


def q_length(rng: random.Random) -> Question:
    w = rng.choice(WORDS)
    q = rng.choice((f"How many letters does '{w}' have?", f"Count the letters in '{w}'."))
    r = " ".join(f"{i + 1}: {c}." for i, c in enumerate(w)) + f" That is {len(w)} letters."
    return q, r, f"'{w}' has {len(w)} letters."


def q_letter(rng: random.Random) -> Question:
    w = rng.choice(WORDS)
    i = rng.randrange(len(w))
    q = f"What is letter number {i + 1} of '{w}'?"
    r = f"Counting from the start: " + ", ".join(f"{k + 1} = {c}" for k, c in enumerate(w[:i + 1])) + "."
    return q, r, f"{w[i]}"


def q_alpha(rng: random.Random) -> Question:
    ws = rng.sample(WORDS, rng.randrange(2, 5))
    q = rng.choice((f"Put these words in alphabetical order: {', '.join(ws)}.",
                    f"Which comes first in the dictionary: {' or '.join(ws)}?"))
    order = sorted(ws)
    r = "First letters: " + ", ".join(f"{w} -> {w[0]}" for w in ws) + f". Compare letter by letter: {', '.join(order)}."
    return q, r, (f"{order[0]}." if q.startswith("Which") else ", ".join(order) + ".")


def q_vowels(rng: random.Random) -> Question:
    w = rng.choice(WORDS)
    v = [c for c in w if c in "aeiou"]
    q = f"How many vowels are in '{w}'?"
    r = f"Go through {w}: the vowels a, e, i, o, u found are {', '.join(v) or 'none'}. That makes {len(v)}."
    return q, r, f"{len(v)}."


def q_plural(rng: random.Random) -> Question:
    w = rng.choice(("box", "bus", "city", "baby", "glass", "dish", "fox", "party", "key", "toy", "cat", "church",
                    "lady", "brush", "day", "pen"))
    if w.endswith(("s", "x", "ch", "sh")):
        p, why = w + "es", "it ends in s, x, ch or sh, so add -es"
    elif w.endswith("y") and w[-2] not in "aeiou":
        p, why = w[:-1] + "ies", "it ends in a consonant + y, so y becomes -ies"
    else:
        p, why = w + "s", "the regular rule adds -s"
    return f"What is the plural of '{w}'?", f"Look at the ending of {w}: {why}.", f"{p}"


def q_rhyme(rng: random.Random) -> Question:
    pairs = (("cat", "hat", "dog"), ("moon", "spoon", "star"), ("cake", "lake", "bread"), ("light", "night", "lamp"),
             ("rain", "train", "cloud"), ("bee", "tree", "leaf"), ("king", "ring", "crown"), ("boat", "coat", "sail"))
    w, yes, no = rng.choice(pairs)
    opts = [yes, no]
    rng.shuffle(opts)
    q = f"Which word rhymes with '{w}': {opts[0]} or {opts[1]}?"
    r = f"{w} ends with the sound -{w[-3:] if len(w) > 3 else w[-2:]}. {yes} ends the same way; {no} does not."
    return q, r, f"{yes}."


def q_days(rng: random.Random) -> Question:
    d, n = rng.randrange(7), rng.randrange(1, 20)
    q = f"What day is it {n} days after {DAYS[d]}?"
    r = f"A week repeats every 7 days, and {n} = {n // 7} x 7 + {n % 7}. Move {n % 7} days on from {DAYS[d]}: " \
        f"{', '.join(DAYS[(d + k) % 7] for k in range(1, n % 7 + 1)) or DAYS[d]}."
    return q, r, f"{DAYS[(d + n) % 7]}."


def q_months(rng: random.Random) -> Question:
    m = rng.randrange(12)
    q = rng.choice((f"Which month comes after {MONTHS[m]}?", f"What is the month before {MONTHS[m]}?"))
    step = 1 if "after" in q else -1
    other = (m + step) % 12
    return q, f"{MONTHS[m]} is month {m + 1} of 12; one {'on' if step == 1 else 'back'}, wrapping round the year, " \
              f"is month {other + 1}.", f"{MONTHS[other]}."


# ------------------------------------------------------------------------------------------------ logic

def q_order(rng: random.Random) -> Question:
    a, b, c = rng.sample(NAMES, 3)
    adj, sup = rng.choice((("taller", "tallest"), ("older", "oldest"), ("faster", "fastest"), ("heavier", "heaviest")))
    q = f"{a} is {adj} than {b}, and {b} is {adj} than {c}. Who is the {sup}?"
    r = f"Order them: {a} > {b} from the first fact, {b} > {c} from the second, so {a} > {b} > {c}."
    return q, r, f"{a}."


def q_syllogism(rng: random.Random) -> Question:
    animal, trait, name = rng.choice(ANIMALS), rng.choice(TRAITS), rng.choice(NAMES)
    if rng.random() < 0.5:
        q = f"All {animal} {trait}. {name} is one of the {animal}. Is the rule true for {name}?"
        r = f"The rule covers every one of the {animal}, and {name} is one of them, so the rule applies to {name}."
        return q, r, "Yes."
    q = f"Some {animal} {trait}. {name} is one of the {animal}. Is the rule certainly true for {name}?"
    r = f"'Some' does not mean all: {name} may be one of the {animal} that do not. The facts do not force it."
    return q, r, "Not necessarily."


def q_boolean(rng: random.Random) -> Question:
    x, y = rng.choice((True, False)), rng.choice((True, False))
    op = rng.choice(("and", "or"))
    val = (x and y) if op == "and" else (x or y)
    q = f"Is '{str(x).lower()} {op} {str(y).lower()}' true or false?"
    rule = "'and' needs both sides true" if op == "and" else "'or' needs at least one side true"
    return q, f"{rule}. Left is {str(x).lower()}, right is {str(y).lower()}, so the result is {str(val).lower()}.", \
        f"{str(val).lower().capitalize()}."


def q_if_then(rng: random.Random) -> Question:
    cause, effect = rng.choice((("it rains", "the street gets wet"), ("the bell rings", "the class ends"),
                                ("the kettle boils", "it whistles"), ("you press the switch", "the lamp turns on")))
    if rng.random() < 0.5:
        q = f"If {cause}, {effect}. Suppose {cause}. What follows?"
        return q, f"The rule says {cause} leads to {effect}, and the condition holds, so the result holds.", \
            f"{effect[0].upper()}{effect[1:]}."
    q = f"If {cause}, {effect}. We know that {effect}. Does that prove that {cause}?"
    return q, "No: the rule only goes one way. Something else could have the same result.", "No, it does not prove it."


def q_odd_one_out(rng: random.Random) -> Question:
    group = rng.choice((("apple", "pear", "plum", "cherry"), ("red", "blue", "green", "yellow"),
                        ("cat", "dog", "horse", "cow"), ("piano", "violin", "flute", "drum")))
    odd = rng.choice(("table", "river", "seven", "chair", "cloud"))
    items = list(rng.sample(group, 3)) + [odd]
    rng.shuffle(items)
    q = f"Which word does not belong: {', '.join(items)}?"
    r = f"{', '.join(w for w in items if w != odd)} belong to one group; {odd} is not one of them."
    return q, r, f"{odd}."


QUESTION_KINDS: tuple[Callable[[random.Random], Question], ...] = (
    q_add, q_sub, q_mul, q_div, q_compare, q_sum_list, q_sequence, q_parity, q_story_count, q_units, q_clock,
    q_money, q_percent, q_hex, q_binary, q_expression, q_variables, q_list_item,
    q_reverse, q_length, q_letter, q_alpha, q_vowels, q_plural, q_rhyme, q_days, q_months,
    q_order, q_syllogism, q_boolean, q_if_then, q_odd_one_out)


# ------------------------------------------------------------------------------------------------ prose

TOPICS = {
    "garden": (("the gardener", "my neighbour", "the old man", "a child"), ("waters", "plants", "picks", "prunes"),
               ("the roses", "the beans", "a row of carrots", "the apple tree", "the herbs"),
               ("in the morning", "after the rain", "before the frost", "every spring")),
    "kitchen": (("the cook", "my sister", "the baker", "our uncle"), ("slices", "stirs", "bakes", "tastes"),
                ("the bread", "a pot of soup", "the onions", "a lemon cake", "the sauce"),
                ("before dinner", "on Sunday", "for the guests", "while the oven heats")),
    "harbor": (("the fisherman", "a sailor", "the captain", "the harbour master"), ("ties", "paints", "checks", "loads"),
               ("the boat", "the nets", "a crate of fish", "the ropes", "the old lighthouse"),
               ("at dawn", "when the tide turns", "in the fog", "before the storm")),
    "school": (("the teacher", "a pupil", "the headmistress", "the class"), ("reads", "writes", "draws", "explains"),
               ("a short poem", "the map of the river", "a long sum", "the story", "the timetable"),
               ("after the break", "on the first day", "before the holidays", "in the afternoon")),
    "market": (("the trader", "a farmer", "the young woman", "the grocer"), ("sells", "weighs", "counts", "arranges"),
               ("the tomatoes", "a basket of eggs", "the cheese", "fresh bread", "the flowers"),
               ("on Saturday", "at noon", "as the crowd arrives", "before closing")),
}
LINKS = ("Then", "Later", "After that", "Meanwhile", "Soon", "In the end")
COMMENTS = ("It is quiet work, and nobody hurries.", "The air smells of rain.", "Everyone seems pleased with the result.",
            "A dog watches from the doorway.", "The light changes slowly.", "Nobody says very much.",
            "It takes longer than planned.", "Some of it will be left for tomorrow.",
            "A sign says: 10% off, today only.", "The bill comes to $14.50.", "Room #3 is already full.",
            "Someone has written \"back at 5\" on the door.", "The list reads: (1) bread; (2) milk; (3) eggs.")


def prose_paragraph(rng: random.Random) -> str:
    subjects, verbs, objects, times = TOPICS[rng.choice(sorted(TOPICS))]
    sentences = []
    for i in range(rng.randrange(4, 9)):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(times)}."
        s = (f"{rng.choice(LINKS)} {s}" if i and rng.random() < 0.4 else s[0].upper() + s[1:])
        sentences.append(s)
        if rng.random() < 0.25:
            sentences.append(rng.choice(COMMENTS))
    return " ".join(sentences)


# --------------------------------------------------------------------------------------- conversations

def specialization(rng: random.Random) -> str:
    field = rng.choice(sorted(FIELDS))
    topics, how = FIELDS[field]
    return (f"You are also a specialist in {field}: {topics}.\n\nWhen you reason about {field}: {how}. Work step by "
            "step and check each intermediate result. If you are not sure, say so. Keep the final answer short.")


def system_prompt(rng: random.Random, base: str = STAND_IN_SYSTEM_PROMPT) -> str:
    """The stand-in's own system prompt, half of the time with a field of expertise appended."""
    return base + SEPARATOR + specialization(rng) if rng.random() < 0.5 else base


def question(rng: random.Random) -> Question:
    q, r, a = rng.choice(QUESTION_KINDS)(rng)
    verdict = validate_text(f"[THINK]{r}[/THINK]{a}")
    if not verdict.ok:  # a template bug, not bad luck: fail loudly
        raise AssertionError(f"stand-in corpus: {q!r} breaks the reasoning contract: {verdict.codes}")
    return q, r, a


def conversation(rng: random.Random) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt(rng)}]
    for _ in range(rng.choices((1, 2, 3, 4), weights=TURN_WEIGHTS)[0]):
        q, r, a = question(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": f"[THINK]{r}[/THINK]{a}"}]
    return messages


def conversations(seed: int, n: int, exclude: set[str] = frozenset()) -> Iterator[list[dict]]:
    """`n` conversations whose first question is not in `exclude`."""
    rng = random.Random(f"stand-in:{seed}")
    made = 0
    while made < n:
        conv = conversation(rng)
        if conv[1]["content"] in exclude:
            continue
        made += 1
        yield conv


def held_out_prompts(n: int) -> list[list[dict]]:
    """Conversations up to their first question, from a stream training never draws from (its own seed
    space), for the stand-in's own greedy check."""
    return [conv[:2] for conv in conversations(-1, n)]


def prose(seed: int, n: int) -> Iterator[str]:
    rng = random.Random(f"stand-in-prose:{seed}")
    for _ in range(n):
        yield "\n\n".join(prose_paragraph(rng) for _ in range(rng.randrange(1, 4)))
