"""User-provided SFT JSONL: the three reasoning shapes, and every reason a row is left out."""
from __future__ import annotations

import json

import pytest

from contract.prompt import build_system_prompt
from data import rejections as R
from data.conversations import group_key
from data.sft_ingest import TurnStats, read_jsonl

SYSTEM = build_system_prompt("Think first.[THINK]notes[/THINK]answer")
GOOD_ANSWER = "[THINK]$D020 is the VIC-II border colour register.[/THINK]POKE 53280,0"


def user(text="What sets the border colour?"):
    return {"role": "user", "content": text}


def assistant(content=GOOD_ANSWER, **extra):
    return {"role": "assistant", "content": content, **extra}


def run(tmp_path, lines: list) -> tuple[list, R.Rejections, TurnStats]:
    path = tmp_path / "rows.jsonl"
    raw = b"\n".join(x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode("utf-8")
                     for x in lines)
    path.write_bytes(raw)
    rej = R.Rejections(echo=False)
    turns = TurnStats()
    rows = read_jsonl(path, "rows.jsonl", SYSTEM, rej, turns)
    return rows, rej, turns


def reasons(rej):
    return [(r.line, r.reason) for r in rej.items]


def test_three_shapes_become_the_canonical_inline_form(tmp_path):
    shapes = [
        {"messages": [user(), assistant()]},
        {"messages": [user(), {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "$D020 is the VIC-II border colour register."},
            {"type": "text", "text": "POKE 53280,0"}]}]},
        {"messages": [user(), {"role": "assistant", "reasoning_content": "$D020 is the VIC-II border colour register.",
                               "content": "POKE 53280,0"}]},
    ]
    rows, rej, turns = run(tmp_path, shapes)
    assert rej.items == []
    assert [r.messages for r in rows] == [[{"role": "system", "content": SYSTEM}, user(),
                                           {"role": "assistant", "content": GOOD_ANSWER}]] * 3
    assert (turns.checked, turns.valid) == (3, 3)


def test_own_identical_system_prompt_is_accepted_and_ids_kept(tmp_path):
    rows, rej, _ = run(tmp_path, [{"id": "mine-1", "messages": [{"role": "system", "content": SYSTEM}, user(),
                                                                assistant()]}])
    assert rej.items == [] and rows[0].id == "mine-1" and rows[0].messages[0]["content"] == SYSTEM


@pytest.mark.parametrize("content, code", [
    ("no think tags at all", "missing_think_open"),
    ("[THINK]never closed", "unclosed_think"),
    ("[THINK]a [THINK]b[/THINK]answer", "nested_think"),
    ("[THINK]   [/THINK]answer", "empty_reasoning"),
    ("[THINK]reasoning here[/THINK]   ", "empty_answer"),
    ("[THINK]reasoning here[/THINK]answer [INST] more", "control_token_in_answer"),
    ("[THINK]Same text.[/THINK]same   TEXT.", "answer_copies_reasoning"),
])
def test_reasoning_contract_failures_are_named(tmp_path, content, code):
    rows, rej, turns = run(tmp_path, [{"messages": [user(), assistant(content)]}])
    assert rows == [] and reasons(rej) == [(1, code)]
    assert (turns.checked, turns.valid) == (1, 0)


def test_conflicting_and_unsupported_shapes(tmp_path):
    rows, rej, _ = run(tmp_path, [
        {"messages": [user(), assistant(GOOD_ANSWER, reasoning_content="again")]},
        {"messages": [user(), {"role": "assistant", "content": [{"type": "image", "url": "x"}]}]},
    ])
    assert reasons(rej) == [(1, "conflicting_reasoning_shapes"), (2, "unsupported_content")]


def test_every_structural_rejection_reason(tmp_path):
    lines = [
        '{"messages": [',                                                      # 1 bad JSON
        {"text": "no messages"},                                               # 2
        {"messages": []},                                                      # 3
        {"messages": ["just a string"]},                                       # 4
        {"messages": [user(), {"role": "tool", "content": "x"}]},              # 5
        {"messages": [assistant(), user()]},                                   # 6
        {"messages": [user(), user("again"), assistant()]},                    # 7
        {"messages": [user("   "), assistant()]},                              # 8
        {"messages": [user(), assistant("")]},                                 # 9
        {"messages": [user("hi [/INST] there"), assistant()]},                 # 10
        {"messages": [{"role": "system", "content": "You are helpful."}, user(), assistant()]},   # 11
        {"messages": [user(), {"role": "system", "content": SYSTEM}, assistant()]},             # 12
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',            # 13 not UTF-8
        {"messages": [user(), assistant(tool_calls=[{"id": 1}])]},             # 14
        [1, 2, 3],                                                             # 15 not an object
        "",                                                                    # 16 blank line: not a row
        {"messages": [user(), assistant()]},                                   # 17 good
    ]
    rows, rej, _ = run(tmp_path, lines)
    assert reasons(rej) == [
        (1, "bad_json"), (2, "missing_messages"), (3, "missing_messages"), (4, "bad_message"), (5, "wrong_role"),
        (6, "wrong_role_order"), (7, "wrong_role_order"), (8, "empty_turn"), (9, "empty_turn"),
        (10, "control_token_in_prompt"), (11, "system_prompt_mismatch"), (12, "system_prompt_not_first"),
        (13, "not_utf8"), (14, "wrong_role"), (15, "missing_messages")]
    assert [r.line for r in rows] == [17]
    assert all(r.file == "rows.jsonl" and r.detail for r in rej.items)


def test_empty_and_binary_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n  \n")
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    rej = R.Rejections(echo=False)
    assert read_jsonl(empty, "empty.jsonl", SYSTEM, rej, TurnStats()) == []
    assert read_jsonl(binary, "blob.jsonl", SYSTEM, rej, TurnStats()) == []
    assert [(r.file, r.line, r.reason) for r in rej.items] == [("empty.jsonl", None, "empty_file"),
                                                               ("blob.jsonl", None, "binary_file")]


def test_multi_turn_conversation_kept_whole(tmp_path):
    rows, rej, turns = run(tmp_path, [{"messages": [user(), assistant(), user("And the background?"),
                                                    assistant("[THINK]$D021 is background 0.[/THINK]POKE 53281,0")]}])
    assert rej.items == [] and len(rows[0].messages) == 5 and (turns.checked, turns.valid) == (2, 2)


def test_group_key_ignores_case_spacing_and_punctuation():
    a = [{"role": "user", "content": "What is at $D020?"}]
    b = [{"role": "user", "content": "  what IS at   $d020 ! "}]
    assert group_key(a) == group_key(b)
    assert group_key(a) != group_key([{"role": "user", "content": "What is at $D021?"}])
