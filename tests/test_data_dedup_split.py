"""Duplicate removal and the deterministic, leak-free train/validation split."""
from __future__ import annotations

import random

from data import dedup, split

WORDS = ("sprite raster border screen colour timer interrupt vector kernal basic token opcode cycle page "
         "zero stack accumulator index register memory bank cartridge disk tape sector track byte").split()


def _text(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def test_exact_duplicate_keeps_the_first():
    a = _text(1)
    dups = dedup.find_duplicates([("a", a), ("b", _text(2)), ("c", a)])
    assert [(d.dropped, d.kept, d.kind) for d in dups] == [("c", "a", "exact")]


def test_near_duplicate_found_and_unrelated_texts_kept():
    base = _text(3).split()
    edited = list(base)
    for i in range(0, len(edited), 60):      # a few scattered edits: still ~85-90% of 5-grams shared
        edited[i] = "changed"
    docs = [("orig", " ".join(base)), ("other", _text(4)), ("edit", "\n".join(edited))]
    dups = dedup.find_duplicates(docs)
    assert [(d.dropped, d.kept, d.kind) for d in dups] == [("edit", "orig", "near")]
    assert dups[0].similarity >= dedup.NEAR_THRESHOLD


def test_minhash_estimate_tracks_true_jaccard():
    # Regression: a (a*x+b) mod p hash that overflowed 64 bits made unrelated texts look 90% alike.
    rng = random.Random(0)
    a, b = dedup._permutations()
    for _ in range(5):
        x, y = _text(rng.randrange(10**6), 400), _text(rng.randrange(10**6), 400)
        vocab: dict[str, int] = {}
        sx = dedup.signature(dedup._shingle_hashes(dedup._word_ids(x, vocab)), a, b)
        sy = dedup.signature(dedup._shingle_hashes(dedup._word_ids(y, vocab)), a, b)
        assert (sx == sy).mean() < 0.2


def test_dedup_is_deterministic():
    docs = [(str(i), _text(i % 7)) for i in range(12)]
    assert dedup.find_duplicates(docs) == dedup.find_duplicates(list(docs))


def test_split_is_deterministic_and_disjoint():
    keys = [f"doc{i}" for i in range(200)]
    one, two = split.assign(keys, 0.1, seed=0), split.assign(list(reversed(keys)), 0.1, seed=0)
    assert one == two
    assert set(one.values()) == {"train", "validation"}
    assert 5 <= sum(v == "validation" for v in one.values()) <= 40
    assert split.assign(keys, 0.1, seed=1) != one


def test_split_of_a_key_does_not_depend_on_the_others():
    keys = [f"doc{i}" for i in range(100)]
    base = split.assign(keys, 0.2, seed=3)
    grown = split.assign(keys + [f"new{i}" for i in range(50)], 0.2, seed=3)
    assert all(grown[k] == base[k] for k in keys)


def test_small_inputs_still_get_both_sides():
    assert sorted(split.assign(["a", "b"], 0.01, seed=0).values()) == ["train", "validation"]
    assert sorted(split.assign(["a", "b"], 0.99, seed=0).values()) == ["train", "validation"]
    assert all(split.assign(["only"], 0.5, seed=s) == {"only": "train"} for s in range(20))


def test_repeated_keys_share_a_side():
    side = split.assign(["g1", "g1", "g2", "g1"], 0.5, seed=0)
    assert set(side) == {"g1", "g2"}


def test_dapt_validation_holds_several_short_documents():
    from data.dapt_corpus import MIN_VALIDATION_DOCUMENTS, Document, assign_splits

    def corpus(n):
        return [Document(f"doc{i}.txt", f"doc{i}.txt", "x" * (100 * (i + 1))) for i in range(n)]
    docs = corpus(24)
    assign_splits(docs, 0.01, seed=0)                        # the fraction alone holds out one document
    held = [d for d in docs if d.split == "validation"]
    assert len(held) == MIN_VALIDATION_DOCUMENTS
    by_fraction = [d for d in held if split.score(d.id, 0) == min(split.score(x.id, 0) for x in docs)]
    median = sorted(len(d.text) for d in docs)[11]
    assert by_fraction and all(len(d.text) <= median for d in held if d not in by_fraction)
    again = corpus(24)
    assign_splits(again, 0.01, seed=0)
    assert [d.split for d in again] == [d.split for d in docs]
    # A larger fraction is not cut back, and a tiny corpus keeps three quarters of its documents for training.
    wide = corpus(24)
    assign_splits(wide, 0.5, seed=0)
    assert sum(d.split == "validation" for d in wide) > MIN_VALIDATION_DOCUMENTS
    small = corpus(5)
    assign_splits(small, 0.01, seed=0)
    assert sum(d.split == "validation" for d in small) == 1
