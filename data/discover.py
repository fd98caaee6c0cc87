"""Find the inputs under --raw-dir: corpus documents, SFT JSONL files and the reference tables folder."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from data import rejections as R

DOCUMENT_SUFFIXES = (".txt", ".md", ".json")
SFT_SUFFIXES = (".jsonl",)
# Files that describe the corpus rather than belong to it (licence notices, the folder's README).
_CORPUS_META = re.compile(r"^(?:readme|notices?|licen[cs]e|copying|authors)(?:[._-].*)?$", re.I)


@dataclass
class Found:
    documents: list[Path] = field(default_factory=list)
    sft_files: list[Path] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)      # (path, why) - not data, not an error


def find_reference_dir(raw_dir: Path, explicit: Path | None) -> Path | None:
    """--reference-dir if given, else raw-dir/reference, else the sibling raw-dir/../reference."""
    if explicit is not None:
        return explicit
    for candidate in (raw_dir / "reference", raw_dir.parent / "reference"):
        if candidate.is_dir():
            return candidate
    return None


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def discover(raw_dir: Path, reference_dir: Path | None, rejections: R.Rejections,
             skip: list[Path] = ()) -> Found:
    """`skip`: folders never read as raw input (the output folder, should it sit inside raw-dir)."""
    found = Found()
    # The reference tables are read on their own; our own outputs must never feed the next run.
    skip_dirs = [p.resolve() for p in [reference_dir, *skip] if p is not None]
    for path in sorted(raw_dir.rglob("*")):
        rel = relative(path, raw_dir)
        if any(part.startswith(".") for part in path.relative_to(raw_dir).parts):
            continue                                     # .git, .DS_Store, editor swap files
        resolved = path.resolve()
        if any(resolved == d or d in resolved.parents for d in skip_dirs):
            continue
        if path.is_dir():
            continue
        if not path.is_file():
            found.ignored.append((rel, "not a regular file"))
            continue
        suffix = path.suffix.lower()
        if _CORPUS_META.match(path.name):
            found.ignored.append((rel, "corpus documentation (README/NOTICES/LICENSE), not training text"))
        elif suffix in DOCUMENT_SUFFIXES:
            found.documents.append(path)
        elif suffix in SFT_SUFFIXES:
            found.sft_files.append(path)
        else:
            rejections.add("dapt", rel, None, R.UNSUPPORTED_EXTENSION,
                           f"'{suffix or path.name}' is not one of .txt, .md, .json (documents) or .jsonl (SFT rows)")
    return found
