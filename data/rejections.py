"""Every input left out of the processed data is recorded here, so nothing disappears silently.

One Rejection per row (SFT line) or per document/file (DAPT), with the file, the 1-based line when
there is one, a stable reason code and a human detail. The report lists them all and counts them.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

# Reason codes for files and documents (SFT rows also use the reasoning/prompt contract codes).
NOT_UTF8 = "not_utf8"
BINARY_FILE = "binary_file"
EMPTY_FILE = "empty_file"
UNREADABLE_FILE = "unreadable_file"
UNSUPPORTED_EXTENSION = "unsupported_extension"
EMPTY_AFTER_NORMALISATION = "empty_after_normalisation"
TOO_SHORT = "too_short"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
BAD_JSON = "bad_json"
UNSUPPORTED_JSON_SHAPE = "unsupported_json_shape"
MISSING_MESSAGES = "missing_messages"
BAD_MESSAGE = "bad_message"
WRONG_ROLE = "wrong_role"
WRONG_ROLE_ORDER = "wrong_role_order"
EMPTY_TURN = "empty_turn"
CONTROL_TOKEN_IN_PROMPT = "control_token_in_prompt"
TOO_LONG = "too_long"
DUPLICATE_CONVERSATION = "duplicate_conversation"


@dataclass
class Rejection:
    phase: str          # "dapt" or "sft"
    file: str
    line: int | None
    reason: str
    detail: str = ""
    id: str | None = None

    def message(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Rejections:
    items: list[Rejection] = field(default_factory=list)
    echo: bool = True          # print each one to stderr as it happens
    echo_limit: int = 50       # then only count, so a broken 100k-line file does not flood the terminal

    def add(self, phase: str, file: str, line: int | None, reason: str, detail: str = "", id: str | None = None):
        r = Rejection(phase, str(file), line, reason, detail, id)
        self.items.append(r)
        if self.echo:
            if len(self.items) <= self.echo_limit:
                print(f"[data] left out: {r.message()}", file=sys.stderr)
            elif len(self.items) == self.echo_limit + 1:
                print("[data] further left-out rows are only counted; see validation_report.json", file=sys.stderr)
        return r

    def counts(self, phase: str | None = None) -> dict[str, int]:
        c = Counter(r.reason for r in self.items if phase is None or r.phase == phase)
        return dict(sorted(c.items()))

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.items]
