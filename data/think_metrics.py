"""THINK coverage and diversity of the SFT data.

Coverage: share of assistant turns read (before any row is left out) that satisfy the reasoning
contract. Diversity: share of distinct reasoning texts after normalisation (case and whitespace), and
distinct-2 (distinct token bigrams / all bigrams) over the reasoning of a fixed-size, hash-chosen
sample, so the figure does not fall just because more conversations were generated.
"""
from __future__ import annotations

import hashlib
import re

from contract.reasoning import parse_assistant

DISTINCT2_SAMPLE = 1000
_WS = re.compile(r"\s+")


def normalise_reasoning(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def reasoning_texts(rows) -> list[str]:
    out = []
    for row in rows:
        for m in row.messages:
            if m["role"] == "assistant":
                verdict = parse_assistant(m)
                if verdict.ok:
                    out.append(verdict.turn.reasoning)
    return out


def coverage(checked: int, valid: int) -> float | None:
    return round(valid / checked, 4) if checked else None


def diversity(reasonings: list[str], counter) -> dict:
    if not reasonings:
        return {"reasoning_texts": 0, "distinct_reasoning_share": None, "distinct_2": None,
                "distinct_2_sample": 0, "tokens": counter.kind}
    normed = [normalise_reasoning(r) for r in reasonings]
    sample = sorted(set(normed), key=lambda t: hashlib.sha1(t.encode("utf-8")).hexdigest())[:DISTINCT2_SAMPLE]
    bigrams, total = set(), 0
    for text in sample:
        toks = counter.tokens(text)
        pairs = list(zip(toks, toks[1:]))
        bigrams.update(pairs)
        total += len(pairs)
    return {"reasoning_texts": len(normed),
            "distinct_reasoning_share": round(len(set(normed)) / len(normed), 4),
            "distinct_2": round(len(bigrams) / total, 4) if total else None,
            "distinct_2_sample": len(sample), "tokens": counter.kind}
