"""Exact and near-duplicate removal for whole documents.

Near duplicates are found with MinHash over word 5-gram shingles and LSH banding, then confirmed on
the signatures (estimated Jaccard >= threshold). Word-level shingles ignore whitespace and line-break
differences, which is exactly how the same text tends to differ between two conversions.
The first document in the given order is kept, so the caller decides precedence (we sort by id).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")
SHINGLE = 5
NUM_PERM = 64
BANDS, ROWS = 16, 4          # 16 x 4 = 64; candidate pairs from about Jaccard 0.5 upwards
NEAR_THRESHOLD = 0.8


@dataclass(frozen=True)
class Duplicate:
    dropped: str
    kept: str
    kind: str               # "exact" or "near"
    similarity: float


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _word_ids(text: str, vocab: dict[str, int]) -> np.ndarray:
    words = _WORD.findall(text.lower())
    return np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads small sequential values over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _shingle_hashes(ids: np.ndarray) -> np.ndarray:
    """One well-mixed 64-bit value per word 5-gram (a polynomial over the word ids, vectorised)."""
    if ids.size == 0:
        return _mix(np.zeros(1, dtype=np.uint64))
    n = max(ids.size - SHINGLE + 1, 1)
    h = np.zeros(n, dtype=np.uint64)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for k in range(min(SHINGLE, ids.size)):
            h = h * base + ids[k:k + n] + np.uint64(1)
    return np.unique(_mix(h))


def _permutations(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    top = np.iinfo(np.uint64).max
    a = rng.integers(0, top, size=NUM_PERM, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, top, size=NUM_PERM, dtype=np.uint64, endpoint=True)
    return a, b


def signature(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash with multiply-shift hashing: h_k(x) = (a_k * x + b_k mod 2^64) >> 32, a_k odd.

    (A textbook (a*x + b) mod p needs 128-bit products; with 64-bit numpy it silently stops being a
    permutation and every h_k picks the same smallest shingle, which makes unrelated texts look alike.)"""
    sig = np.empty(NUM_PERM, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, NUM_PERM, 16):
            block = (np.outer(a[start:start + 16], shingles) + b[start:start + 16, None]) >> np.uint64(32)
            sig[start:start + 16] = block.min(axis=1)
    return sig


def find_duplicates(docs: list[tuple[str, str]], threshold: float = NEAR_THRESHOLD,
                    progress=None) -> list[Duplicate]:
    """docs: (id, text) in precedence order. Returns one Duplicate per document to drop."""
    out: list[Duplicate] = []
    seen_exact: dict[str, str] = {}
    survivors: list[tuple[str, str]] = []
    for doc_id, text in docs:
        h = content_hash(text)
        if h in seen_exact:
            out.append(Duplicate(doc_id, seen_exact[h], "exact", 1.0))
        else:
            seen_exact[h] = doc_id
            survivors.append((doc_id, text))

    a, b = _permutations()
    vocab: dict[str, int] = {}
    sigs = []
    for doc_id, text in survivors:
        sigs.append(signature(_shingle_hashes(_word_ids(text, vocab)), a, b))
        if progress is not None:
            progress.update(1)
    buckets: dict[tuple, list[int]] = {}
    for i, sig in enumerate(sigs):
        candidates: set[int] = set()
        for band in range(BANDS):
            key = (band, sig[band * ROWS:(band + 1) * ROWS].tobytes())
            candidates.update(buckets.setdefault(key, []))
        best = None
        for j in sorted(candidates):
            sim = float(np.mean(sigs[j] == sig))
            if sim >= threshold and (best is None or sim > best[1]):
                best = (j, sim)
        if best is not None:
            out.append(Duplicate(survivors[i][0], survivors[best[0]][0], "near", round(best[1], 4)))
            continue   # a dropped document does not become a reference for later ones
        for band in range(BANDS):
            buckets.setdefault((band, sig[band * ROWS:(band + 1) * ROWS].tobytes()), []).append(i)
    return out
