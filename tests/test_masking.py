"""Strict assistant-only label masking (docs/contracts.md, docs/specs/reasoning_contract.md section 4)."""
from __future__ import annotations

import json

import pytest
from jinja2 import TemplateError

from contract.prompt import read_model_system_prompt, system_prompt_for
from contract.tokens import (EOS_ID, INST_CLOSE_ID, INST_OPEN_ID, SYSTEM_CLOSE_ID, SYSTEM_OPEN_ID, THINK_OPEN_ID)
from train import masking as M
from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
from train.tools.inspect_labels import main as inspect_main


@pytest.fixture(scope="module")
def template() -> str:
    return M.read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)


@pytest.fixture(scope="module")
def default_system(tiny_model_dir) -> str:
    return read_model_system_prompt(tiny_model_dir)


@pytest.fixture(scope="module")
def system(tiny_model_dir) -> str:
    return system_prompt_for(tiny_model_dir)


def conversation(system, *turns) -> list[dict]:
    """[system, user, assistant, user, assistant, ...] from alternating user/assistant items."""
    messages = [{"role": "system", "content": system}]
    for i, turn in enumerate(turns):
        if i % 2 == 0:
            messages.append({"role": "user", "content": turn})
        else:
            messages.append(turn if isinstance(turn, dict) else {"role": "assistant", "content": turn})
    return messages


def good_turns():
    return ("What is at $D020 [THINK] here?",
            "[THINK]$D020 is 53280, a VIC-II register.[/THINK]The border colour register.",
            "And LDA #$00?",
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "Immediate mode."},
                                              {"type": "text", "text": "2 cycles."}]},
            "And STA $D020?",
            {"role": "assistant", "reasoning_content": "Absolute store.", "content": "4 cycles."})


def encode_rows(rows, tok, template, default_system, **kw):
    kw.setdefault("max_length", None)
    return M.encode_dataset(rows, tok, template, default_system_message=default_system, progress=False, **kw)


# ------------------------------------------------------------------------------------------ correct examples

def test_correct_multi_turn_example_passes_untouched(tiny_tokenizer, template, system, default_system):
    messages = conversation(system, *good_turns())
    examples, summary = encode_rows([{"id": "good", "messages": messages}], tiny_tokenizer, template, default_system)
    assert summary["warnings"] == {} and summary["dropped"] == [] and summary["n_kept"] == 1
    enc = examples[0]
    # Untouched: the ids are the plain tokenization of the rendering, labels the ids inside the spans.
    assert enc.input_ids == tiny_tokenizer.encode(enc.text, add_special_tokens=False)
    inside = {i for a, b in enc.token_spans for i in range(a, b)}
    assert enc.labels == [t if i in inside else M.IGNORE_INDEX for i, t in enumerate(enc.input_ids)]
    assert M.check_example(enc, max_length=len(enc.input_ids)) == []
    assert summary["supervised_tokens"] == len(inside) and summary["total_tokens"] == len(enc.input_ids)
    direct = M.encode_conversation(messages, tiny_tokenizer, template, example_id="good")
    assert (direct.input_ids, direct.labels) == (enc.input_ids, enc.labels)


def test_every_assistant_turn_starts_with_think_and_ends_with_eos(tiny_tokenizer, template, system):
    enc = M.encode_conversation(conversation(system, *good_turns()), tiny_tokenizer, template, example_id="x")
    assert len(enc.token_spans) == 3 == len(enc.char_spans)
    for a, b in enc.token_spans:
        assert enc.labels[a] == THINK_OPEN_ID and enc.labels[b - 1] == EOS_ID
        assert M.IGNORE_INDEX not in enc.labels[a:b]
        assert enc.labels[a - 1] == M.IGNORE_INDEX and enc.input_ids[a - 1] == INST_CLOSE_ID


def test_prompt_side_is_never_supervised(tiny_tokenizer, template, system):
    enc = M.encode_conversation(conversation(system, *good_turns()), tiny_tokenizer, template, example_id="x")
    ids, labels = enc.input_ids, enc.labels
    sys_open, sys_close = ids.index(SYSTEM_OPEN_ID), ids.index(SYSTEM_CLOSE_ID)
    # The system prompt carries the model's literal [THINK]...[/THINK] example: control id 34, not supervised.
    assert THINK_OPEN_ID in ids[sys_open:sys_close]
    assert set(labels[:sys_close + 1]) == {M.IGNORE_INDEX}
    opens = [i for i, t in enumerate(ids) if t == INST_OPEN_ID]
    closes = [i for i, t in enumerate(ids) if t == INST_CLOSE_ID]
    assert len(opens) == len(closes) == 3
    for a, b in zip(opens, closes):
        assert set(labels[a:b + 1]) == {M.IGNORE_INDEX}  # includes the user's literal "[THINK]"
    assert THINK_OPEN_ID in ids[opens[0]:closes[0]]
    supervised_text = "".join(enc.text[s:e] for s, e in enc.char_spans)
    assert "[INST]" not in supervised_text and "[SYSTEM_PROMPT]" not in supervised_text


def test_default_system_prompt_used_when_no_system_message(tiny_tokenizer, template, default_system):
    messages = conversation("", *good_turns()[:2])[1:]
    text, spans = M.render_with_spans(messages, template, default_system_message=default_system)
    assert text.startswith(f"<s>[SYSTEM_PROMPT]{default_system}[/SYSTEM_PROMPT][INST]")
    assert len(spans) == 1 and text[spans[0][0]:].startswith("[THINK]") and text.endswith("</s>")
    with pytest.raises(TemplateError, match="no default_system_message"):
        M.render_with_spans(messages, template)


# ------------------------------------------------------------------------------------------ strict failures

def _strict_findings(rows, tok, template, default_system, **kw):
    with pytest.raises(M.StrictMaskingError) as info:
        encode_rows(rows, tok, template, default_system, **kw)
    return info.value


# A template that opens the generation block four characters before the end of the answer.
MID_TOKEN_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
                      "{% else %}{{ m.content[:-4] }}{% generation %}{{ m.content[-4:] + eos_token }}"
                      "{% endgeneration %}{% endif %}{% endfor %}")


def test_no_generation_blocks(tiny_tokenizer, tiny_model_dir, system, default_system):
    official = (tiny_model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    rows = [{"id": "a", "messages": conversation(system, *good_turns()[:2])}]
    err = _strict_findings(rows, tiny_tokenizer, official, default_system)
    assert [f.code for f in err.findings] == [M.NO_GENERATION_BLOCKS]
    assert "no {% generation %} block" in str(err)


def test_commented_out_generation_block_does_not_count(template):
    assert M.has_generation_blocks(template)
    assert not M.has_generation_blocks("{# {% generation %}x{% endgeneration %} #}{{ bos_token }}")


@pytest.mark.parametrize("case", ["zero_supervised", "mid_token", "no_think", "eos_outside", "inst_in_answer",
                                  "overlong", "reasoning", "render"])
def test_each_strict_failure_code_fires(case, tiny_tokenizer, template, system, default_system):
    tpl, max_length = template, None
    turns = list(good_turns()[:2])
    if case == "zero_supervised":
        turns, expected = turns[:1], {M.ZERO_SUPERVISED_TOKENS}
    elif case == "mid_token":
        # Precondition: " register" is one token, so a boundary 4 characters before the end cuts it.
        assert len(tiny_tokenizer.encode(" register", add_special_tokens=False)) == 1
        tpl, expected = MID_TOKEN_TEMPLATE, {M.SPAN_BOUNDARY_INSIDE_TOKEN, M.TURN_NOT_STARTING_WITH_THINK}
        turns[1] = "[THINK]$D020 is 53280.[/THINK]The border colour register"
    elif case == "no_think":
        turns[1] = "The border colour register."
        expected = {M.TURN_NOT_STARTING_WITH_THINK, "reasoning_contract:missing_think_open"}
    elif case == "eos_outside":
        tpl = template.replace("{{- render_content(message['content']) + eos_token }}\n{%- endgeneration %}",
                               "{{- render_content(message['content']) }}\n{%- endgeneration %}{{- eos_token }}")
        assert tpl != template
        expected = {M.TURN_NOT_ENDING_WITH_EOS}
    elif case == "inst_in_answer":
        turns[1] = "[THINK]$D020 is 53280.[/THINK]The border colour [INST] register."
        expected = {M.PROMPT_CONTROL_TOKEN_SUPERVISED, "reasoning_contract:control_token_in_answer"}
    elif case == "overlong":
        full = M.encode_conversation(conversation(system, *turns), tiny_tokenizer, template, example_id="x")
        max_length, expected = full.token_spans[0][1] - 1, {M.TRUNCATION_CUTS_SUPERVISED_TURN}
    elif case == "reasoning":
        turns[1] = "[THINK]$D020 is 53280.[/THINK]"
        expected = {"reasoning_contract:empty_answer"}
    elif case == "render":
        turns.append("tool output")
        rows = [{"id": "bad-1", "messages": conversation(system, *turns)[:3]
                 + [{"role": "tool", "content": "x"}]}]
        err = _strict_findings(rows, tiny_tokenizer, tpl, default_system)
        assert {f.code for f in err.findings} == {M.RENDER_FAILED} and "got: tool" in str(err)
        return
    rows = [{"id": "bad-1", "messages": conversation(system, *turns)}]
    if tpl is template and max_length is None:
        # A correct neighbour must not be reported along with the broken row.
        rows.insert(0, {"id": "good-0", "messages": conversation(system, *good_turns())})
    err = _strict_findings(rows, tiny_tokenizer, tpl, default_system, max_length=max_length)
    assert {f.code for f in err.findings} == expected
    assert {f.example_id for f in err.findings} == {"bad-1"}
    assert "[bad-1]" in str(err) and "1 example(s)" in str(err)


def test_error_lists_twenty_findings_and_the_total(tiny_tokenizer, template, system, default_system):
    rows = [{"id": f"r{i}", "messages": conversation(system, "q")} for i in range(25)]
    err = _strict_findings(rows, tiny_tokenizer, template, default_system)
    text = str(err)
    assert len(err.findings) == 25 and "[r19]" in text and "[r20]" not in text
    assert "and 5 more (25 in total)" in text


# ------------------------------------------------------------------------------------------ over-long examples

def _mixed_rows(system):
    long_answer = "[THINK]" + " ".join(["cycle counting"] * 60) + "[/THINK]4 cycles."
    return [{"id": "short", "messages": conversation(system, *good_turns()[:2])},
            {"id": "long", "messages": conversation(system, "STA $D020?", long_answer)}]


def _length(tok, template, messages):
    return len(M.encode_conversation(messages, tok, template, example_id="x").input_ids)


def test_overlong_is_an_error_unless_dropped_explicitly(tiny_tokenizer, template, system, default_system):
    rows = _mixed_rows(system)
    max_length = _length(tiny_tokenizer, template, rows[0]["messages"]) + 5
    err = _strict_findings(rows, tiny_tokenizer, template, default_system, max_length=max_length)
    assert [(f.example_id, f.code) for f in err.findings] == [("long", M.TRUNCATION_CUTS_SUPERVISED_TURN)]

    examples, summary = encode_rows(rows, tiny_tokenizer, template, default_system, max_length=max_length,
                                    drop_overlong=True)
    assert [e.example_id for e in examples] == ["short"]
    assert summary["n_rows"] == 2 and summary["n_kept"] == 1
    assert [(d["id"], d["code"]) for d in summary["dropped"]] == [("long", M.TRUNCATION_CUTS_SUPERVISED_TURN)]


def test_cut_unsupervised_tail_is_truncated_in_strict_mode(tiny_tokenizer, template, system, default_system):
    messages = conversation(system, *good_turns()[:2], "a trailing question nobody answers " * 3)
    full = M.encode_conversation(messages, tiny_tokenizer, template, example_id="tail")
    max_length = full.token_spans[-1][1] + 2
    examples, summary = encode_rows([{"id": "tail", "messages": messages}], tiny_tokenizer, template,
                                    default_system, max_length=max_length)
    assert len(examples[0].input_ids) == max_length
    assert examples[0].labels == full.labels[:max_length]
    assert summary["warnings"] == {M.TRUNCATED_UNSUPERVISED_TAIL: 1}


def test_non_strict_mode_counts_warnings(tiny_tokenizer, template, system, default_system):
    rows = _mixed_rows(system) + [
        {"id": "no-assistant", "messages": conversation(system, "just a question")},
        {"id": "no-think", "messages": conversation(system, "q", "The border colour register.")},
        {"id": "bad-role", "messages": [{"role": "tool", "content": "x"}]},
    ]
    max_length = _length(tiny_tokenizer, template, rows[0]["messages"]) + 5
    examples, summary = encode_rows(rows, tiny_tokenizer, template, default_system, max_length=max_length,
                                    strict=False)
    assert [e.example_id for e in examples] == ["short", "long", "no-think"]
    long = examples[1]
    assert len(long.input_ids) == max_length and len(long.labels) == max_length
    assert long.labels[-1] != M.IGNORE_INDEX  # the cut turn keeps its remaining supervised tokens
    assert summary["warnings"] == {M.TRUNCATION_CUTS_SUPERVISED_TURN: 1, M.ZERO_SUPERVISED_TOKENS: 1,
                                   M.TURN_NOT_STARTING_WITH_THINK: 1, "reasoning_contract:missing_think_open": 1,
                                   M.RENDER_FAILED: 1}
    assert [(d["id"], d["code"]) for d in summary["dropped"]] == [("no-assistant", M.ZERO_SUPERVISED_TOKENS),
                                                                  ("bad-role", M.RENDER_FAILED)]
    assert summary["total_tokens"] == sum(len(e.input_ids) for e in examples)
    assert summary["supervised_tokens"] == sum(e.n_supervised for e in examples)

    # The explicit flag wins over truncation in non-strict mode too.
    examples, summary = encode_rows(rows[:2], tiny_tokenizer, template, default_system, max_length=max_length,
                                    strict=False, drop_overlong=True)
    assert [e.example_id for e in examples] == ["short"]
    assert [(d["id"], d["code"]) for d in summary["dropped"]] == [("long", M.TRUNCATION_CUTS_SUPERVISED_TURN)]


def test_non_strict_without_generation_blocks_drops_everything(tiny_tokenizer, tiny_model_dir, system,
                                                               default_system):
    official = (tiny_model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    rows = [{"id": "a", "messages": conversation(system, *good_turns()[:2])}]
    examples, summary = encode_rows(rows, tiny_tokenizer, official, default_system, strict=False)
    assert examples == [] and summary["warnings"][M.NO_GENERATION_BLOCKS] == 1
    assert summary["dropped"][0]["code"] == M.ZERO_SUPERVISED_TOKENS


# ------------------------------------------------------------------------------------------ renderer edges

def test_nested_generation_blocks_are_refused():
    nested = "{% generation %}a{% generation %}b{% endgeneration %}{% endgeneration %}"
    with pytest.raises(ValueError, match="nested"):
        M.render_with_spans([], nested)


def test_reserved_mark_characters_in_input_are_refused(template, system):
    messages = conversation(system, "q\ufdd0", "[THINK]r[/THINK]a")
    with pytest.raises(ValueError, match="U\\+FDD0"):
        M.render_with_spans(messages, template)


def test_none_valued_keys_render_like_missing_keys(template, system):
    base = conversation(system, "q", "[THINK]r[/THINK]a")
    with_none = [dict(m, reasoning_content=None) if m["role"] == "assistant" else m for m in base]
    assert M.render_with_spans(with_none, template) == M.render_with_spans(base, template)


# ------------------------------------------------------------------------------------------ inspect CLI

def _write_sft(dir_, rows):
    dir_.mkdir(parents=True, exist_ok=True)
    with (dir_ / "train.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def test_inspect_cli_writes_jsonl(tiny_model_dir, system, tmp_path, capsys):
    rows = [{"id": "good", "source": "t", "messages": conversation(system, *good_turns())},
            {"id": "good-2", "source": "t", "messages": conversation(system, *good_turns()[:2])},
            {"id": "skipped", "source": "t", "messages": conversation(system, *good_turns()[:2])}]
    _write_sft(tmp_path / "sft", rows)
    out = tmp_path / "labels.jsonl"
    rc = inspect_main(["--model-path", str(tiny_model_dir), "--sft-dir", str(tmp_path / "sft"),
                       "--limit", "2", "--out", str(out)])
    assert rc == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["good", "good-2"]
    first = records[0]
    assert len(first["input_ids"]) == len(first["labels"]) == first["n_tokens"]
    assert first["first_supervised_id"] == THINK_OPEN_ID and first["last_supervised_id"] == EOS_ID
    assert len(first["supervised_spans"]) == 3
    assert first["supervised_spans"][0]["text"].startswith("[THINK]$D020")
    assert all(s["text"].endswith("</s>") for s in first["supervised_spans"])
    assert first["text"].startswith("<s>[SYSTEM_PROMPT]")
    shown = capsys.readouterr().out
    # Not a terminal here, so supervised stretches are bracketed.
    assert "⟦[THINK]$D020 is 53280, a VIC-II register.[/THINK]The border colour register.</s>⟧" in shown
    assert "first supervised id 34, last supervised id 2" in shown


def test_inspect_cli_fails_on_strict_findings(tiny_model_dir, system, tmp_path, capsys):
    _write_sft(tmp_path / "sft", [{"id": "no-think", "messages": conversation(system, "q", "Just an answer.")}])
    rc = inspect_main(["--model-path", str(tiny_model_dir), "--sft-dir", str(tmp_path / "sft")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "[no-think] turn_not_starting_with_think" in err and "strict assistant-only loss" in err
    assert inspect_main(["--model-path", str(tiny_model_dir), "--sft-dir", str(tmp_path / "sft"),
                         "--no-strict"]) == 0
