"""Generate SFT conversations from the reference tables with a balanced mix of tables and question kinds.

Balance is two-level: every table present gets an equal share of --sft-max, and inside a table every
question kind gets an equal share; whatever a small kind or table cannot fill goes to the others.
Generation is deterministic for a given seed (each kind draws from its own seeded random stream, so
adding a kind does not change the questions of the others).
"""
from __future__ import annotations

import math
import random
import re

from data import gen_basic, gen_io, gen_kernal, gen_keyboard, gen_memory, gen_opcodes, gen_sid
from data.sft_example import Example

MODULES = (gen_opcodes, gen_memory, gen_io, gen_kernal, gen_basic, gen_sid, gen_keyboard)
_WS = re.compile(r"\s+")


def norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def available_kinds(tables) -> list[tuple[str, str, object]]:
    return [(m.TABLE, kind, fn) for m in MODULES if m.TABLE in tables for kind, fn in m.KINDS.items()]


def _pool(fn, tables, seed: int, table: str, kind: str, cap: int, exclude=None) -> list[Example]:
    """Up to `cap` examples with distinct questions and distinct reasoning, none for which exclude(example) holds."""
    rng = random.Random(f"{seed}:{table}:{kind}")
    out: list[Example] = []
    seen_q, seen_r = set(), set()
    misses = 0
    for ex in fn(tables, rng):
        q, r = norm(ex.question), norm(ex.reasoning)
        if q in seen_q or r in seen_r or (exclude is not None and exclude(ex)):
            misses += 1
            if misses > 4 * cap + 100:   # a random kind that keeps repeating itself is exhausted
                break
            continue
        seen_q.add(q)
        seen_r.add(r)
        out.append(ex)
        if len(out) >= cap:
            break
    return out


def waterfill(capacity: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` as evenly as possible over keys, never giving a key more than its capacity."""
    alloc = {k: 0 for k in capacity}
    remaining = total
    while remaining > 0:
        open_keys = sorted(k for k in capacity if alloc[k] < capacity[k])
        if not open_keys:
            break
        share = max(1, remaining // len(open_keys))
        for k in open_keys:
            give = min(share, capacity[k] - alloc[k], remaining)
            alloc[k] += give
            remaining -= give
            if remaining == 0:
                break
    return alloc


def generate(tables: dict, max_examples: int, seed: int, progress=None, exclude=None) -> list[Example]:
    """`max_examples` examples balanced over tables and kinds; exclude(example) -> True keeps one out (the
    evaluation's held-out facts, data/held_out.py)."""
    kinds = available_kinds(tables)
    if not kinds or max_examples <= 0:
        return []
    n_tables = len({t for t, _, _ in kinds})
    cap = math.ceil(2 * max_examples / n_tables)
    pools: dict[tuple[str, str], list[Example]] = {}
    for table, kind, fn in kinds:
        pools[(table, kind)] = _pool(fn, tables, seed, table, kind, cap, exclude)
        if progress is not None:
            progress.update(1)
    table_capacity = {}
    for (table, _), pool in pools.items():
        table_capacity[table] = table_capacity.get(table, 0) + len(pool)
    table_alloc = waterfill(table_capacity, max_examples)
    chosen: list[Example] = []
    for table, n in sorted(table_alloc.items()):
        kind_capacity = {k: len(p) for (t, k), p in pools.items() if t == table}
        for kind, m in sorted(waterfill(kind_capacity, n).items()):
            chosen.extend(pools[(table, kind)][:m])
    return chosen
