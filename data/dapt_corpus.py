"""The DAPT corpus: read and normalise documents, render the reference tables, drop duplicates, split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data import dedup, normalize, split
from data import rejections as R
from data.decode import decode_text
from data.reference_tables import TABLE_NAMES, is_reference_table
from data.reference_text import render

MIN_CHARS = 32       # fewer non-space characters than this is a fragment, not a document
# The held-out document loss is read per document: several documents show whether DAPT helps across subjects.
MIN_VALIDATION_DOCUMENTS = 3


@dataclass
class Document:
    id: str
    source: str
    text: str
    split: str = ""

    @property
    def collection(self) -> str:
        """'cc65' for 'cc65__cpus.txt', 'reference' for 'reference/opcodes.json', else the file's folder."""
        name = self.source.rsplit("/", 1)[-1]
        if "__" in name:
            return name.split("__", 1)[0]
        return self.source.rsplit("/", 1)[0] if "/" in self.source else "raw"


def json_documents(doc_id: str, data, rejections: R.Rejections, shown: str) -> list[tuple[str, str]]:
    """(id, text) pairs from a JSON file: a known reference table (rendered), {"text": ...} or a list of them."""
    stem = doc_id.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if stem in TABLE_NAMES and is_reference_table(stem, data):
        return [(doc_id, render(stem, data))]
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return [(doc_id, data["text"])]
    if isinstance(data, list) and data and all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in data):
        return [(f"{doc_id}#{i}", x["text"]) for i, x in enumerate(data)]
    rejections.add("dapt", shown, None, R.UNSUPPORTED_JSON_SHAPE,
                   "a JSON document must be a known reference table (" + ", ".join(TABLE_NAMES) +
                   "), an object with a 'text' string or a list of such objects")
    return []


def load_document(path: Path, doc_id: str, rejections: R.Rejections) -> list[tuple[str, str]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        rejections.add("dapt", doc_id, None, R.UNREADABLE_FILE, str(e))
        return []
    decoded = decode_text(raw)
    if decoded.text is None:
        rejections.add("dapt", doc_id, decoded.line, decoded.reason, decoded.detail)
        return []
    if path.suffix.lower() != ".json":
        return [(doc_id, decoded.text)]
    try:
        data = json.loads(decoded.text)
    except json.JSONDecodeError as e:
        rejections.add("dapt", doc_id, e.lineno, R.BAD_JSON, e.msg + f" at column {e.colno}")
        return []
    return json_documents(doc_id, data, rejections, doc_id)


def normalise_documents(pairs: list[tuple[str, str, str]], rejections: R.Rejections,
                        rule_counts: dict[str, int]) -> list[Document]:
    """pairs: (id, source, raw text)."""
    docs = []
    for doc_id, source, text in pairs:
        clean = normalize.normalise(text, rule_counts)
        if not clean.strip():
            rejections.add("dapt", source, None, R.EMPTY_AFTER_NORMALISATION, "nothing left after normalisation", id=doc_id)
            continue
        if len("".join(clean.split())) < MIN_CHARS:
            rejections.add("dapt", source, None, R.TOO_SHORT,
                           f"fewer than {MIN_CHARS} non-space characters after normalisation", id=doc_id)
            continue
        docs.append(Document(doc_id, source, clean))
    return docs


def remove_duplicates(docs: list[Document], rejections: R.Rejections, progress=None) -> tuple[list[Document], list]:
    dups = dedup.find_duplicates([(d.id, d.text) for d in docs], progress=progress)
    dropped = {d.dropped: d for d in dups}
    by_id = {d.id: d for d in docs}
    for d in dups:
        reason = R.EXACT_DUPLICATE if d.kind == "exact" else R.NEAR_DUPLICATE
        detail = (f"same text as {d.kept}" if d.kind == "exact" else
                  f"near-duplicate of {d.kept} (estimated Jaccard {d.similarity:.2f} on word 5-grams)")
        rejections.add("dapt", by_id[d.dropped].source, None, reason, detail, id=d.dropped)
    return [d for d in docs if d.id not in dropped], dups


def assign_splits(docs: list[Document], fraction: float, seed: int) -> None:
    """split.assign by document id, then, when that held out fewer than MIN_VALIDATION_DOCUMENTS, the
    lowest-scoring training documents no longer than the median document move to validation too.

    A held-out loss on one document says how the model does on that document's subject only. Topping up with
    short documents buys more subjects for little training text (a long reference manual would take a large
    share of a small corpus); a corpus under 4 * MIN_VALIDATION_DOCUMENTS documents keeps three quarters for
    training.
    """
    side = split.assign([d.id for d in docs], fraction, seed)
    want = min(MIN_VALIDATION_DOCUMENTS, len(docs) // 4) - sum(s == "validation" for s in side.values())
    if want > 0:
        median = sorted(len(d.text) for d in docs)[(len(docs) - 1) // 2]
        short = sorted((d.id for d in docs if side[d.id] == "train" and len(d.text) <= median),
                       key=lambda i: split.score(i, seed))
        for doc_id in short[:want]:
            side[doc_id] = "validation"
    for d in docs:
        d.split = side[d.id]
