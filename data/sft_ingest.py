"""Read user-provided SFT JSONL files (one {"messages": [...]} object a line) into checked conversations.

Nothing is dropped silently: every line that cannot be used becomes a Rejection with its file and line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data import conversations
from data import rejections as R
from data.decode import looks_binary


@dataclass
class Row:
    id: str
    source: str
    group: str
    messages: list[dict]
    file: str
    line: int | None
    split: str = ""


@dataclass
class TurnStats:
    checked: int = 0
    valid: int = 0


def read_jsonl(path: Path, shown: str, system_prompt: str, rejections: R.Rejections,
               turns: TurnStats) -> list[Row]:
    try:
        data = path.read_bytes()
    except OSError as e:
        rejections.add("sft", shown, None, R.UNREADABLE_FILE, str(e))
        return []
    if not data.strip():
        rejections.add("sft", shown, None, R.EMPTY_FILE, "no rows")
        return []
    if looks_binary(data):
        rejections.add("sft", shown, None, R.BINARY_FILE, "NUL or many control bytes: not a JSONL text file")
        return []
    rows: list[Row] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rejections.add("sft", shown, lineno, R.NOT_UTF8, f"byte 0x{raw[e.start]:02X} at column {e.start + 1}")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            rejections.add("sft", shown, lineno, R.BAD_JSON, e.msg + f" at column {e.colno}")
            continue
        if not isinstance(obj, dict) or "messages" not in obj:
            rejections.add("sft", shown, lineno, R.MISSING_MESSAGES, "each line must be an object with 'messages'")
            continue
        checked = conversations.check(obj["messages"], system_prompt)
        turns.checked += checked.turns_checked
        turns.valid += checked.turns_valid
        row_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id").strip() else f"{shown}:{lineno}"
        if checked.messages is None:
            rejections.add("sft", shown, lineno, checked.reason, checked.detail, id=row_id)
            continue
        group = obj.get("group") if isinstance(obj.get("group"), str) else conversations.group_key(checked.messages)
        rows.append(Row(row_id, str(obj.get("source") or shown), "user:" + group, checked.messages, shown, lineno))
    return rows
