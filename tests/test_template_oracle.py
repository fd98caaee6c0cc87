"""Oracles for the training template and the masker.

1. Our labels equal transformers' own assistant mask (`apply_chat_template(...,
   return_assistant_tokens_mask=True)`) for the same template and messages, and our input_ids equal its ids.
2. The training template without its generation tags renders exactly what the official-style template
   of the checkpoint (the tiny model's chat_template.jinja) renders, including the no-system-message case.
"""
from __future__ import annotations

import re

import pytest

from contract.prompt import read_model_system_prompt, system_prompt_for
from train import masking as M
from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT

LONG_REASONING = " ".join(f"Step {i}: LDA ${i % 256:02X} takes 2 cycles, STA $D020 takes 4." for i in range(300))


def _assistant(reasoning: str, answer: str, shape: str = "inline") -> dict:
    if shape == "inline":
        return {"role": "assistant", "content": f"[THINK]{reasoning}[/THINK]{answer}"}
    if shape == "chunks":
        return {"role": "assistant", "content": [{"type": "thinking", "thinking": reasoning},
                                                 {"type": "text", "text": answer}]}
    return {"role": "assistant", "reasoning_content": reasoning, "content": answer}


def _cases(system: str) -> dict[str, list[dict]]:
    sys_msg = {"role": "system", "content": system}
    user = {"role": "user", "content": "What does $D020 do?"}
    return {
        "single_turn": [sys_msg, user, _assistant("$D020 is 53280.", "Border colour.")],
        "multi_turn_mixed_shapes": [
            sys_msg, user, _assistant("VIC-II register.", "Border colour."),
            {"role": "user", "content": "And $D021?"}, _assistant("Next register.", "Background.", "chunks"),
            {"role": "user", "content": "Cycles for STA abs?"}, _assistant("Absolute store.", "4 cycles.", "field")],
        "no_system_message": [user, _assistant("$D020 is 53280.", "Border colour.")],
        "empty_system_string": [{"role": "system", "content": ""}, user, _assistant("r", "a")],
        "system_as_chunks": [{"role": "system", "content": [{"type": "text", "text": "Think first."},
                                                            {"type": "thinking", "thinking": "like this"},
                                                            {"type": "text", "text": " Then answer."}]},
                             user, _assistant("r", "a")],
        "unicode": [sys_msg, {"role": "user", "content": "Grüße! 日本語で $D020 は？ 😀🎮 ＄Ｄ０２０ e\u0301"},
                    _assistant("Überlegung: 53280 = $D020 ✓ 🧠", "Rahmenfarbe – 境界色 😀")],
        "long_reasoning": [sys_msg, user, _assistant(LONG_REASONING, "4 cycles.")],
        "user_types_control_text": [sys_msg, {"role": "user", "content": "Is [/INST] or [THINK] a token? [INST]"},
                                    _assistant("The user typed tags.", "They are control tokens.")],
        "shape_inline": [sys_msg, user, _assistant("$D020 is 53280.", "Border colour.", "inline")],
        "shape_chunks": [sys_msg, user, _assistant("$D020 is 53280.", "Border colour.", "chunks")],
        "shape_reasoning_content": [sys_msg, user, _assistant("$D020 is 53280.", "Border colour.", "field")],
        "whitespace_edges": [sys_msg, {"role": "user", "content": "  \n padded question \n\n"},
                             _assistant("\n reasoning with newlines \n", "  answer  \n ")],
        "ends_with_user_turn": [sys_msg, user, _assistant("r", "a"), {"role": "user", "content": "Thanks."}],
        "contract_breaking_turn": [sys_msg, user, {"role": "assistant", "content": "No reasoning at all."}],
    }


@pytest.fixture(scope="module")
def template() -> str:
    return M.read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)


@pytest.fixture(scope="module")
def official(tiny_model_dir) -> str:
    return (tiny_model_dir / "chat_template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def default_system(tiny_model_dir) -> str:
    return read_model_system_prompt(tiny_model_dir)


@pytest.fixture(scope="module")
def cases(tiny_model_dir) -> dict[str, list[dict]]:
    return _cases(system_prompt_for(tiny_model_dir))


CASE_NAMES = list(_cases("x"))


def _transformers_mask(tok, messages, template, default_system):
    out = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, default_system_message=default_system)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_labels_equal_transformers_assistant_mask(name, cases, tiny_tokenizer, template, default_system):
    messages = cases[name]
    enc = M.encode_conversation(messages, tiny_tokenizer, template, example_id=name,
                                default_system_message=default_system)
    ids, mask = _transformers_mask(tiny_tokenizer, messages, template, default_system)
    assert enc.input_ids == ids
    assert [int(label != M.IGNORE_INDEX) for label in enc.labels] == mask
    assert all(label in (M.IGNORE_INDEX, token) for label, token in zip(enc.labels, enc.input_ids))
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    assert len(enc.token_spans) == n_assistant


def _without_generation_tags(template: str) -> str:
    stripped = re.sub(r"\{%-?\s*(?:end)?generation\s*-?%\}", "", template)
    assert "generation" not in stripped.split("#}", 1)[1]
    return stripped


@pytest.mark.parametrize("name", CASE_NAMES)
def test_template_renders_like_the_official_one(name, cases, tiny_tokenizer, template, official, default_system):
    messages = cases[name]
    expected = tiny_tokenizer.apply_chat_template(messages, chat_template=official, tokenize=False)
    stripped = tiny_tokenizer.apply_chat_template(messages, chat_template=_without_generation_tags(template),
                                                  tokenize=False, default_system_message=default_system)
    ours, _ = M.render_with_spans(messages, template, default_system_message=default_system)
    assert stripped == expected
    assert ours == expected
    assert M.encode_conversation(messages, tiny_tokenizer, template, example_id=name,
                                 default_system_message=default_system).input_ids == \
        tiny_tokenizer.encode(expected, add_special_tokens=False)


def test_no_system_message_uses_the_model_default(cases, template, default_system):
    text, _ = M.render_with_spans(cases["no_system_message"], template, default_system_message=default_system)
    assert text.startswith(f"<s>[SYSTEM_PROMPT]{default_system}[/SYSTEM_PROMPT][INST]")


# ------------------------------------------------------------------------------- differences on purpose

def test_difference_reasoning_alias_keys(tiny_tokenizer, template, default_system, cases):
    """transformers copies a `reasoning` (or `thinking`) message key into reasoning_content before rendering;
    we do not, because those keys are not one of the reasoning contract's three shapes. Such a row renders
    without [THINK] here, and strict masking rejects it instead of silently training on a shape the data
    report never validated."""
    messages = cases["single_turn"][:2] + [{"role": "assistant", "reasoning": "$D020 is 53280.",
                                            "content": "Border colour."}]
    theirs = tiny_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                default_system_message=default_system)
    ours, _ = M.render_with_spans(messages, template, default_system_message=default_system)
    assert "[THINK]$D020 is 53280.[/THINK]Border colour.</s>" in theirs
    assert ours.endswith("[/INST]Border colour.</s>")
    with pytest.raises(M.StrictMaskingError, match="missing_think_open"):
        M.encode_dataset([{"id": "alias", "messages": messages}], tiny_tokenizer, template, max_length=None,
                         default_system_message=default_system, progress=False)


def test_difference_token_cut_by_a_span_boundary(tiny_tokenizer, default_system):
    """transformers marks every token that overlaps a generation span; we mark only tokens wholly inside
    it, so a token straddling the boundary (part prompt, part answer) is never trained on. The case only
    arises with a template whose block boundary cuts a token, which strict mode rejects anyway."""
    template = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
                "{% else %}{{ m.content[:-4] }}{% generation %}{{ m.content[-4:] + eos_token }}"
                "{% endgeneration %}{% endif %}{% endfor %}")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The register"}]
    enc = M.encode_conversation(messages, tiny_tokenizer, template, example_id="cut")
    ids, mask = _transformers_mask(tiny_tokenizer, messages, template, default_system)
    assert enc.input_ids == ids and enc.split_boundaries
    ours = [int(label != M.IGNORE_INDEX) for label in enc.labels]
    differing = [i for i, (a, b) in enumerate(zip(ours, mask)) if a != b]
    assert len(differing) == 1 and mask[differing[0]] == 1 and ours[differing[0]] == 0
    assert tiny_tokenizer.decode([ids[differing[0]]]) == " register"
