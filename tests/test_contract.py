"""The reasoning and prompt contracts (docs/specs/reasoning_contract.md): every failure code fires on a
minimal case, the three assistant shapes normalise to one canonical form, the system prompt is built
from the model's own bytes."""
from __future__ import annotations

import pytest

from contract import prompt as P
from contract import reasoning as R
from contract.tokens import EOS_ID, INST_OPEN_ID, THINK_CLOSE_ID, THINK_OPEN_ID

# One minimal text case per code that validate_text / parse_assistant can produce.
TEXT_CASES = {
    R.MISSING_THINK_OPEN: {"content": "The border colour register."},
    R.UNCLOSED_THINK: {"content": "[THINK]$D020 is 53280, the border colour."},
    R.NESTED_THINK: {"content": "[THINK]a [THINK]b[/THINK]The answer."},
    R.EMPTY_REASONING: {"content": "[THINK] \n [/THINK]The answer."},
    R.EMPTY_ANSWER: {"content": "[THINK]Some reasoning.[/THINK] \n"},
    R.CONTROL_TOKEN_IN_ANSWER: {"content": "[THINK]Some reasoning.[/THINK]The answer.[/THINK]"},
    R.ANSWER_COPIES_REASONING: {"content": "[THINK]Border is $D020.[/THINK]border is  $d020."},
    R.CONFLICTING_REASONING: {"reasoning_content": "r", "content": "[THINK]r[/THINK]The answer."},
    R.UNSUPPORTED_CONTENT: {"content": [{"type": "image_url", "image_url": "x.png"}]},
}


@pytest.mark.parametrize("code", list(TEXT_CASES))
def test_each_text_failure_code_fires(code):
    verdict = R.parse_assistant({"role": "assistant", **TEXT_CASES[code]})
    assert code in verdict.codes and not verdict.ok


def test_every_failure_code_is_covered():
    assert set(TEXT_CASES) | {R.MISSING_EOS} == set(R.FAILURE_CODES)


@pytest.mark.parametrize("message", [
    {"content": 42},
    {"content": ["plain string chunk"]},
    {"content": [{"type": "text", "text": 5}]},
    {"reasoning_content": ["not", "a", "string"], "content": "The answer."},
])
def test_unsupported_content_variants(message):
    assert R.parse_assistant(message).codes == (R.UNSUPPORTED_CONTENT,)


@pytest.mark.parametrize("answer", ["x [INST] y", "x </s>", "x <pad>", "x [SYSTEM_PROMPT]", "x <SPECIAL_42>"])
def test_any_control_text_in_answer_is_rejected(answer):
    assert R.CONTROL_TOKEN_IN_ANSWER in R.validate_text(f"[THINK]r[/THINK]{answer}").codes


def test_leading_whitespace_before_think_is_missing_open():
    assert R.validate_text(" [THINK]r[/THINK]a").codes == (R.MISSING_THINK_OPEN,)


def test_valid_turn_passes_and_splits():
    verdict = R.validate_text("[THINK]$D020 is 53280.[/THINK]The border colour register.")
    assert verdict.ok
    assert verdict.turn == R.AssistantTurn("$D020 is 53280.", "The border colour register.")


THREE_SHAPES = [
    {"role": "assistant", "content": "[THINK]$D020 is 53280.[/THINK]The border colour register."},
    {"role": "assistant", "content": [{"type": "thinking", "thinking": "$D020 is 53280."},
                                      {"type": "text", "text": "The border colour register."}]},
    {"role": "assistant", "reasoning_content": "$D020 is 53280.", "content": "The border colour register."},
]


def test_three_shapes_normalise_to_the_same_canonical_form():
    canonical = [R.canonical_message(m)[0] for m in THREE_SHAPES]
    assert canonical[0] == canonical[1] == canonical[2] == {
        "role": "assistant", "content": "[THINK]$D020 is 53280.[/THINK]The border colour register."}


def test_canonical_message_refuses_invalid_turn():
    message, verdict = R.canonical_message({"role": "assistant", "content": "no reasoning"})
    assert message is None and verdict.codes == (R.MISSING_THINK_OPEN,)


def test_empty_reasoning_content_falls_back_to_content():
    # An empty field is "not given", so the inline tags in content are the reasoning, not a conflict.
    assert R.parse_assistant({"reasoning_content": "", "content": "[THINK]r[/THINK]a"}).ok


# ------------------------------------------------------------------------------------------ token space

def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_token_space_valid(tiny_tokenizer):
    ids = [THINK_OPEN_ID, *_ids(tiny_tokenizer, "border"), THINK_CLOSE_ID, *_ids(tiny_tokenizer, "The answer."), EOS_ID]
    assert R.validate_token_ids(ids, tiny_tokenizer).ok


@pytest.mark.parametrize("build,codes", [
    (lambda r, a: [*r, THINK_CLOSE_ID, *a, EOS_ID], (R.MISSING_THINK_OPEN,)),
    (lambda r, a: [THINK_OPEN_ID, *r, THINK_CLOSE_ID, *a], (R.MISSING_EOS,)),
    (lambda r, a: [THINK_OPEN_ID, *r, *a], (R.UNCLOSED_THINK, R.MISSING_EOS)),
    (lambda r, a: [THINK_OPEN_ID, *r, *a, EOS_ID], (R.UNCLOSED_THINK,)),
    (lambda r, a: [THINK_OPEN_ID, *r, THINK_OPEN_ID, *r, THINK_CLOSE_ID, *a, EOS_ID], (R.NESTED_THINK,)),
    (lambda r, a: [THINK_OPEN_ID, THINK_CLOSE_ID, *a, EOS_ID], (R.EMPTY_REASONING,)),
    (lambda r, a: [THINK_OPEN_ID, *r, THINK_CLOSE_ID, EOS_ID], (R.EMPTY_ANSWER,)),
    (lambda r, a: [THINK_OPEN_ID, *r, THINK_CLOSE_ID, *a, INST_OPEN_ID, EOS_ID], (R.CONTROL_TOKEN_IN_ANSWER,)),
    (lambda r, a: [THINK_OPEN_ID, *r, THINK_CLOSE_ID, *r, EOS_ID], (R.ANSWER_COPIES_REASONING,)),
])
def test_token_space_failure_codes(tiny_tokenizer, build, codes):
    reasoning, answer = _ids(tiny_tokenizer, "border colour"), _ids(tiny_tokenizer, "The answer.")
    assert R.validate_token_ids(build(reasoning, answer), tiny_tokenizer).codes == codes


def test_spelled_out_think_is_not_the_control_token(tiny_tokenizer):
    # "[THINK]" built from ordinary pieces decodes the same but is not id 34.
    spelled = [i for ch in "[THINK]" for i in _ids(tiny_tokenizer, ch)]
    ids = spelled + _ids(tiny_tokenizer, "r") + [THINK_CLOSE_ID] + _ids(tiny_tokenizer, "a") + [EOS_ID]
    assert R.validate_token_ids(ids, tiny_tokenizer).codes == (R.MISSING_THINK_OPEN,)


# ------------------------------------------------------------------------------------------ prompt contract

def test_system_prompt_is_model_bytes_plus_separator_plus_specialization(tiny_model_dir):
    model_prompt = (tiny_model_dir / "SYSTEM_PROMPT.txt").read_bytes().decode("utf-8")
    built = P.system_prompt_for(tiny_model_dir)
    assert built == model_prompt + P.SEPARATOR + P.specialization()
    assert built.startswith(model_prompt) and "Commodore 64" in built


def test_model_system_prompt_is_read_byte_for_byte(tmp_path):
    (tmp_path / "SYSTEM_PROMPT.txt").write_bytes("  Think first.[THINK]x[/THINK]\r\n\n".encode("utf-8"))
    assert P.read_model_system_prompt(tmp_path) == "  Think first.[THINK]x[/THINK]\r\n\n"


def test_missing_or_broken_system_prompt_file(tmp_path):
    with pytest.raises(P.PromptContractError, match="SYSTEM_PROMPT.txt: missing"):
        P.read_model_system_prompt(tmp_path)
    (tmp_path / "SYSTEM_PROMPT.txt").write_bytes(b"ok \xff")
    with pytest.raises(P.PromptContractError, match="not valid UTF-8 at byte 3"):
        P.read_model_system_prompt(tmp_path)


def test_check_conversation_codes():
    system = "SYS"
    user = {"role": "user", "content": "hi"}
    assert P.check_conversation([{"role": "system", "content": system}, user], system) == []
    assert P.check_conversation([{"role": "system", "content": [{"type": "text", "text": "SY"},
                                                                {"type": "text", "text": "S"}]}, user], system) == []
    assert P.check_conversation([user], system) == [P.MISSING_SYSTEM_PROMPT]
    assert P.check_conversation([], system) == [P.MISSING_SYSTEM_PROMPT]
    assert P.check_conversation([{"role": "system", "content": "SYS "}, user], system) == [P.SYSTEM_PROMPT_MISMATCH]
    assert P.check_conversation([user, {"role": "system", "content": system}], system) == [P.SYSTEM_PROMPT_NOT_FIRST]
    assert P.check_conversation([{"role": "system", "content": system}, user,
                                 {"role": "system", "content": system}], system) == [P.SYSTEM_PROMPT_NOT_FIRST]


def test_check_rendered_prompt_codes():
    assert P.check_rendered_prompt("<s>[SYSTEM_PROMPT]SYS[/SYSTEM_PROMPT][INST]x[/INST]", "SYS") == []
    assert P.check_rendered_prompt("[SYSTEM_PROMPT]SYS[/SYSTEM_PROMPT]", "SYS") == [P.MISSING_SYSTEM_PROMPT]
    assert P.check_rendered_prompt("<s>[SYSTEM_PROMPT]SYS2[/SYSTEM_PROMPT]", "SYS") == [P.SYSTEM_PROMPT_MISMATCH]


def test_with_system_prompt_replaces_any_system_message():
    messages = [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]
    assert P.with_system_prompt(messages, "new") == [{"role": "system", "content": "new"},
                                                     {"role": "user", "content": "hi"}]
