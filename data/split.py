"""Deterministic train/validation split by a key (document id for DAPT, group key for SFT).

Each key gets a score from a hash of (seed, key): a key's side never depends on which other keys are
present, so adding files moves nothing else. Small inputs still get one validation item (and keep one
training item) whenever there are at least two keys; a single key always goes to training.
"""
from __future__ import annotations

import hashlib


def score(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(keys: list[str], fraction: float, seed: int) -> dict[str, str]:
    """Map each distinct key to "train" or "validation"."""
    uniq = sorted(set(keys))
    if len(uniq) == 1:
        return {uniq[0]: "train"}            # one key cannot be split; training needs it more
    scores = {k: score(k, seed) for k in uniq}
    side = {k: ("validation" if scores[k] < fraction else "train") for k in uniq}
    if len(uniq) >= 2:
        if "validation" not in side.values():
            side[min(uniq, key=scores.get)] = "validation"
        if "train" not in side.values():
            side[max(uniq, key=scores.get)] = "train"
    return side
