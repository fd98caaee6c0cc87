"""Token counts for the report: the model's tokenizer and chat template when a model is given,
whitespace-separated words otherwise (marked as such in the report, so nobody mistakes them)."""
from __future__ import annotations

import math

from contract.tokens import EOS


class TokenCounter:
    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.kind = "model" if tokenizer is not None else "whitespace"

    def text(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        out = []
        for start in range(0, len(texts), 256):
            enc = self.tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]
            out += [len(ids) for ids in enc]
        return out

    def tokens(self, text: str) -> list:
        """The token sequence of one text (ids with a model, lower-cased words without)."""
        if self.tokenizer is None:
            return text.lower().split()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def conversations(self, conversations: list[list[dict]]) -> list[int]:
        """Length of each whole rendered conversation, as training tokenizes it.

        Same ids as apply_chat_template(messages, tokenize=True) (render, then encode without adding
        special tokens), but rendered one by one and encoded in batches, which is many times faster."""
        if self.tokenizer is None:
            return [sum(len(str(m["content"]).split()) for m in msgs) for msgs in conversations]
        texts = [self.tokenizer.apply_chat_template(msgs, tokenize=False) for msgs in conversations]
        return self.text(texts)

    def assistant_turns(self, contents: list[str]) -> list[int]:
        """Supervised length of each assistant turn: its text plus the closing </s>."""
        if self.tokenizer is None:
            return [len(c.split()) for c in contents]
        return self.text([c + EOS for c in contents])


def length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    xs = sorted(lengths)

    def pct(p: float) -> int:
        return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

    return {"count": len(xs), "total": sum(xs), "min": xs[0], "mean": round(sum(xs) / len(xs), 1),
            "p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "max": xs[-1]}
