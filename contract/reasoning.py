"""The reasoning contract (docs/specs/reasoning_contract.md): one assistant turn is
[THINK] + non-empty reasoning + [/THINK] + non-empty final answer (+ </s> in token space).

Used unchanged by the data report (on dataset rows) and by the post-training checks (on generations),
so the two can never disagree about what "valid" means.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from contract.tokens import EOS_ID, NUM_CONTROL_SLOTS, THINK_CLOSE, THINK_CLOSE_ID, THINK_OPEN, THINK_OPEN_ID

# Failure codes, in the order they are checked. Each is a stable string used in reports.
MISSING_THINK_OPEN = "missing_think_open"        # turn does not start with [THINK]
UNCLOSED_THINK = "unclosed_think"                # [THINK] never closed by [/THINK]
NESTED_THINK = "nested_think"                    # a second [THINK] inside the reasoning
EMPTY_REASONING = "empty_reasoning"              # nothing but whitespace between the tags
EMPTY_ANSWER = "empty_answer"                    # nothing but whitespace after [/THINK]
CONTROL_TOKEN_IN_ANSWER = "control_token_in_answer"  # [THINK], [/THINK], [INST], </s>, ... in the answer
ANSWER_COPIES_REASONING = "answer_copies_reasoning"  # the answer is the reasoning again
CONFLICTING_REASONING = "conflicting_reasoning_shapes"  # reasoning given twice (field and inline/chunk)
UNSUPPORTED_CONTENT = "unsupported_content"      # content is neither a string nor text/thinking chunks
MISSING_EOS = "missing_eos"                      # token space: generation did not end with </s>

FAILURE_CODES = (MISSING_THINK_OPEN, UNCLOSED_THINK, NESTED_THINK, EMPTY_REASONING, EMPTY_ANSWER,
                 CONTROL_TOKEN_IN_ANSWER, ANSWER_COPIES_REASONING, CONFLICTING_REASONING, UNSUPPORTED_CONTENT,
                 MISSING_EOS)

# Text forms of control tokens that must never appear in a final answer.
_CONTROL_TEXT = re.compile(r"\[/?(?:THINK|INST|SYSTEM_PROMPT|TOOL_CALLS|TOOL_RESULTS|AVAILABLE_TOOLS|IMG|"
                           r"IMG_BREAK|IMG_END)\]|</?s>|<pad>|<unk>|<SPECIAL_\d+>")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class AssistantTurn:
    reasoning: str
    answer: str

    @property
    def canonical(self) -> str:
        """The one form every shape is normalised to: an inline string."""
        return f"{THINK_OPEN}{self.reasoning}{THINK_CLOSE}{self.answer}"


@dataclass(frozen=True)
class Verdict:
    codes: tuple[str, ...]
    turn: AssistantTurn | None = None

    @property
    def ok(self) -> bool:
        return not self.codes


def _normalise_ws(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def validate_text(text: str) -> Verdict:
    """Check an inline assistant string `[THINK]reasoning[/THINK]answer` (no </s>)."""
    if not text.startswith(THINK_OPEN):
        return Verdict((MISSING_THINK_OPEN,))
    rest = text[len(THINK_OPEN):]
    close = rest.find(THINK_CLOSE)
    if close < 0:
        return Verdict((UNCLOSED_THINK,))
    reasoning, answer = rest[:close], rest[close + len(THINK_CLOSE):]
    codes = []
    if THINK_OPEN in reasoning:
        codes.append(NESTED_THINK)
    if not reasoning.strip():
        codes.append(EMPTY_REASONING)
    if not answer.strip():
        codes.append(EMPTY_ANSWER)
    if _CONTROL_TEXT.search(answer):
        codes.append(CONTROL_TOKEN_IN_ANSWER)
    if answer.strip() and _normalise_ws(answer) == _normalise_ws(reasoning):
        codes.append(ANSWER_COPIES_REASONING)
    return Verdict(tuple(codes), AssistantTurn(reasoning, answer))


def _chunks_to_text(content) -> tuple[str | None, str | None]:
    """Flatten text/thinking chunks to the inline form; (None, code) when a chunk is not understood."""
    parts = []
    for chunk in content:
        if not isinstance(chunk, dict):
            return None, UNSUPPORTED_CONTENT
        kind = chunk.get("type")
        if kind == "text" and isinstance(chunk.get("text"), str):
            parts.append(chunk["text"])
        elif kind == "thinking" and isinstance(chunk.get("thinking"), str):
            parts.append(f"{THINK_OPEN}{chunk['thinking']}{THINK_CLOSE}")
        else:
            return None, UNSUPPORTED_CONTENT
    return "".join(parts), None


def parse_assistant(message: dict) -> Verdict:
    """Accept the three shapes users have and validate the result.

    - inline string:        {"content": "[THINK]...[/THINK]answer"}
    - content chunks:       {"content": [{"type": "thinking", "thinking": ...}, {"type": "text", "text": ...}]}
    - reasoning_content:    {"reasoning_content": "...", "content": "answer"}
    """
    content = message.get("content")
    if isinstance(content, list):
        content, code = _chunks_to_text(content)
        if code:
            return Verdict((code,))
    elif not isinstance(content, str):
        return Verdict((UNSUPPORTED_CONTENT,))
    field = message.get("reasoning_content")
    if field is not None and field != "":
        if not isinstance(field, str):
            return Verdict((UNSUPPORTED_CONTENT,))
        if THINK_OPEN in content or THINK_CLOSE in content:
            return Verdict((CONFLICTING_REASONING,))
        content = f"{THINK_OPEN}{field}{THINK_CLOSE}{content}"
    return validate_text(content)


def canonical_message(message: dict) -> tuple[dict | None, Verdict]:
    """{"role": "assistant", "content": canonical string} when the turn is valid, else (None, verdict)."""
    verdict = parse_assistant(message)
    if not verdict.ok:
        return None, verdict
    return {"role": "assistant", "content": verdict.turn.canonical}, verdict


def validate_token_ids(ids: list[int], tokenizer) -> Verdict:
    """Check a generated continuation in token space: [THINK](34) ... [/THINK](35) answer </s>(2).

    Token space matters: a model that spells "[THINK]" out of ordinary BPE pieces decodes to the same
    text but has not learned the control token, so the ids are checked before the decoded text.
    """
    ids = list(ids)
    if not ids or ids[0] != THINK_OPEN_ID:
        return Verdict((MISSING_THINK_OPEN,))
    if ids[-1] != EOS_ID:
        if THINK_CLOSE_ID not in ids:
            return Verdict((UNCLOSED_THINK, MISSING_EOS))
        return Verdict((MISSING_EOS,))
    body = ids[:-1]
    if THINK_CLOSE_ID not in body:
        return Verdict((UNCLOSED_THINK,))
    close = body.index(THINK_CLOSE_ID)
    reasoning_ids, answer_ids = body[1:close], body[close + 1:]
    codes = []
    if THINK_OPEN_ID in reasoning_ids:
        codes.append(NESTED_THINK)
    reasoning = tokenizer.decode(reasoning_ids, skip_special_tokens=False)
    answer = tokenizer.decode(answer_ids, skip_special_tokens=False)
    if not reasoning.strip():
        codes.append(EMPTY_REASONING)
    if not answer.strip():
        codes.append(EMPTY_ANSWER)
    if any(i < NUM_CONTROL_SLOTS for i in answer_ids) or _CONTROL_TEXT.search(answer):
        codes.append(CONTROL_TOKEN_IN_ANSWER)
    if answer.strip() and _normalise_ws(answer) == _normalise_ws(reasoning):
        codes.append(ANSWER_COPIES_REASONING)
    return Verdict(tuple(codes), AssistantTurn(reasoning, answer))
