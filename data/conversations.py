"""Checks every SFT conversation must pass (user-provided and generated alike) and its canonical form.

A conversation is kept only when: each message is {role, content} with a supported role; after the
system message the turns alternate user/assistant and end with an assistant turn; no turn is empty;
user turns carry no control-token text; every assistant turn satisfies the reasoning contract (it is
rewritten to the canonical inline `[THINK]reasoning[/THINK]answer`); the system message is the prompt
contract's (added when absent, a different one is a violation).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from contract.prompt import check_conversation
from contract.reasoning import canonical_message
from data import rejections as R

ROLES = ("system", "user", "assistant")
_CONTROL_TEXT = re.compile(r"\[/?(?:THINK|INST|SYSTEM_PROMPT|TOOL_CALLS|TOOL_RESULTS|AVAILABLE_TOOLS)\]|</?s>")
_GROUP_WS = re.compile(r"[^0-9a-z$%#]+")
_SYSTEM_DETAIL = {
    "system_prompt_mismatch": "the row brings its own system message; the prompt contract needs the model's "
                              "SYSTEM_PROMPT.txt + the C64 specialization (leave the system message out to have "
                              "it added)",
    "system_prompt_not_first": "a system message may only be the first message",
}


@dataclass
class Checked:
    messages: list[dict] | None
    reason: str | None = None
    detail: str = ""
    turns_checked: int = 0
    turns_valid: int = 0


def _text(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text"
                                         and isinstance(c.get("text"), str) for c in content):
        return "".join(c["text"] for c in content)
    return None


def check(messages, system_prompt: str) -> Checked:
    if not isinstance(messages, list) or not messages:
        return Checked(None, R.MISSING_MESSAGES, "'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return Checked(None, R.BAD_MESSAGE, f"message {i} is not an object with a 'role'")
        if m["role"] not in ROLES:
            return Checked(None, R.WRONG_ROLE, f"message {i} has role {m['role']!r}; only system, user, assistant")
        if m.get("tool_calls"):
            return Checked(None, R.WRONG_ROLE, f"message {i} has tool_calls, which the template does not render")

    if any(m["role"] == "system" for m in messages):
        codes = check_conversation(messages, system_prompt)
        if codes:
            return Checked(None, codes[0], _SYSTEM_DETAIL.get(codes[0], ""))
    turns = [m for m in messages if m["role"] != "system"]
    roles = [m["role"] for m in turns]
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or roles != expected[:len(turns)] or roles[-1] != "assistant":
        return Checked(None, R.WRONG_ROLE_ORDER, f"roles after the system message are {roles}; they must alternate "
                                                 "user/assistant, starting with user and ending with assistant")

    out = [{"role": "system", "content": system_prompt}]
    result = Checked(None)
    for i, m in enumerate(turns):
        if m["role"] == "user":
            text = _text(m.get("content"))
            if text is None:
                return _fail(result, R.BAD_MESSAGE, f"user turn {i} content is neither a string nor text chunks")
            if not text.strip():
                return _fail(result, R.EMPTY_TURN, f"user turn {i} is empty")
            if _CONTROL_TEXT.search(text):
                return _fail(result, R.CONTROL_TOKEN_IN_PROMPT,
                             f"user turn {i} contains {_CONTROL_TEXT.search(text).group(0)}")
            out.append({"role": "user", "content": text})
            continue
        content, field_ = m.get("content"), m.get("reasoning_content")
        if (content is None or (isinstance(content, str) and not content.strip())) and not field_:
            result.turns_checked += 1
            return _fail(result, R.EMPTY_TURN, f"assistant turn {i} is empty")
        result.turns_checked += 1
        canon, verdict = canonical_message(m)
        if canon is None:
            return _fail(result, verdict.codes[0], f"assistant turn {i}: {', '.join(verdict.codes)}")
        result.turns_valid += 1
        out.append(canon)
    result.messages = out
    return result


def _fail(result: Checked, reason: str, detail: str) -> Checked:
    result.reason, result.detail, result.messages = reason, detail, None
    return result


def group_key(messages: list[dict]) -> str:
    """Near-identical questions (case, spacing, punctuation) land in the same group, hence the same split."""
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    return "q:" + _GROUP_WS.sub(" ", first_user.lower()).strip()
