"""The unit every SFT generator produces, and small phrasing helpers shared by them."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Example:
    table: str                 # which reference table the facts come from
    kind: str                  # question kind, e.g. "cycles_indexed"
    group: str                 # split key: every question about the same fact shares it
    question: str
    reasoning: str
    answer: str
    params: dict = field(default_factory=dict)   # the question's inputs, so tests can recompute the answer

    @property
    def source(self) -> str:
        return f"generated:{self.table}/{self.kind}"


def pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def join_sentences(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def listing(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def dec_to_hex_steps(value: int) -> str:
    """Show a decimal-to-hex conversion the way one does it by hand."""
    if value < 256:
        return f"{value} = {value // 16}*16 + {value % 16} = ${value:02X}"
    return f"{value} = {value // 256}*256 + {value % 256} = ${value:04X}"
