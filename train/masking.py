"""Assistant-only labels from the training template's `{% generation %}` blocks (docs/contracts.md).

The template decides what is supervised; this module only measures where it said so. A conversation is
rendered once (jinja2 sandbox, a small extension that marks each generation block in the output),
tokenized once with character offsets, and the tokens lying inside the marked character spans keep their
ids as labels; every other position is IGNORE_INDEX. Labels are not shifted: the loss shifts.

Strict mode turns every doubt about those labels into an error before training starts, naming the
example and the reason (codes below; docs/specs/reasoning_contract.md explains each one).
"""
from __future__ import annotations

import json
import re
import sys
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from contract.errors import UserError
from contract.reasoning import parse_assistant
from contract.tokens import (CONTROL_TOKEN_IDS, EOS_ID, IGNORE_INDEX, NUM_CONTROL_SLOTS, THINK_CLOSE_ID,
                             THINK_OPEN_ID)

# Strict-masking failure codes (stable strings, used in reports and tests).
NO_GENERATION_BLOCKS = "no_generation_blocks"
ZERO_SUPERVISED_TOKENS = "zero_supervised_tokens"
SPAN_BOUNDARY_INSIDE_TOKEN = "span_boundary_inside_token"
TURN_NOT_STARTING_WITH_THINK = "turn_not_starting_with_think"
TURN_NOT_ENDING_WITH_EOS = "turn_not_ending_with_eos"
PROMPT_CONTROL_TOKEN_SUPERVISED = "prompt_control_token_supervised"
TRUNCATION_CUTS_SUPERVISED_TURN = "truncation_cuts_supervised_turn"
RENDER_FAILED = "render_failed"
REASONING_CONTRACT_PREFIX = "reasoning_contract:"
# Not a finding: a sequence longer than max_length whose cut part holds no label is simply shortened.
TRUNCATED_UNSUPERVISED_TAIL = "truncated_unsupervised_tail"

MASKING_CODES = (NO_GENERATION_BLOCKS, ZERO_SUPERVISED_TOKENS, SPAN_BOUNDARY_INSIDE_TOKEN,
                 TURN_NOT_STARTING_WITH_THINK, TURN_NOT_ENDING_WITH_EOS, PROMPT_CONTROL_TOKEN_SUPERVISED,
                 TRUNCATION_CUTS_SUPERVISED_TURN, RENDER_FAILED)

# Control tokens an assistant turn may legitimately contain; every other control id belongs to the prompt.
_ASSISTANT_CONTROL_IDS = frozenset({THINK_OPEN_ID, THINK_CLOSE_ID, EOS_ID})
_CONTROL_NAMES = {i: t for t, i in CONTROL_TOKEN_IDS.items()}

# Unicode noncharacters: reserved for internal use, so they never occur in real chat text. They mark the
# generation blocks in the raw rendering and are removed before anything is tokenized.
_OPEN_MARK, _CLOSE_MARK = "\ufdd0", "\ufdd1"
_MARKS = re.compile(f"([{_OPEN_MARK}{_CLOSE_MARK}])")
_MAX_LISTED = 20


# ----------------------------------------------------------------------------------------------- data types

@dataclass
class Encoded:
    example_id: str
    input_ids: list[int]
    labels: list[int]
    text: str                              # the rendering
    char_spans: list[tuple[int, int]]      # generation spans in text
    token_spans: list[tuple[int, int]]     # [start, end) token ranges that are supervised
    # Character positions where a generation span begins or ends inside a token (normally empty).
    split_boundaries: list[int] = field(default_factory=list)

    @property
    def n_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class Finding:
    example_id: str
    code: str
    message: str       # a sentence a person understands

    def line(self) -> str:
        return f"[{self.example_id}] {self.code}: {self.message}"


class StrictMaskingError(UserError):
    """Raised before training when strict assistant-only loss finds problems; lists example ids and reasons."""

    def __init__(self, findings: list[Finding], n_examples: int | None = None):
        self.findings = list(findings)
        ids = {f.example_id for f in self.findings}
        n_examples = len(ids) if n_examples is None else n_examples
        where = f" in {n_examples} example(s)" if n_examples else ""
        head = (f"strict assistant-only loss: {len(self.findings)} problem(s){where}; fix the data or the "
                "template (or drop over-long examples explicitly) before training:")
        lines = [f"  - {f.line()}" for f in self.findings[:_MAX_LISTED]]
        if len(self.findings) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.findings) - _MAX_LISTED} more ({len(self.findings)} in total)")
        super().__init__("\n".join([head, *lines]))


class TemplateNotFound(UserError, FileNotFoundError):
    pass


# ------------------------------------------------------------------------------------------------ rendering

class _GenerationMarks(Extension):
    """`{% generation %}…{% endgeneration %}`: renders the body between two marks, so that the spans can be
    found in the finished text wherever the block sits (top level, loop, macro or set block)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller) -> str:
        return _OPEN_MARK + caller() + _CLOSE_MARK


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Templates expect plain JSON (jinja's built-in tojson HTML-escapes); same behaviour as transformers.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    # trim_blocks/lstrip_blocks as transformers uses them, so the same template renders the same text.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationMarks, "jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.filters["tojson"] = _tojson
    return env


@lru_cache(maxsize=8)
def _compile(template: str):
    return _environment().from_string(template)


def read_template(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise TemplateNotFound(f"{path}: chat template not found")
    return path.read_text(encoding="utf-8")


def has_generation_blocks(template: str) -> bool:
    """True when the template really contains a generation block (one inside a comment does not count)."""
    ast = _environment().parse(template)
    return any(node.identifier == _GenerationMarks.identifier and node.name == "_mark"
               for node in ast.find_all(nodes.ExtensionAttribute))


def _template_messages(messages) -> list[dict]:
    # Keys holding None are dropped, as transformers does, so `content: None` renders like a missing key.
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a list of {'role': ..., 'content': ...} objects")
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _contains_marks(value) -> bool:
    if isinstance(value, str):
        return _OPEN_MARK in value or _CLOSE_MARK in value
    if isinstance(value, dict):
        return any(_contains_marks(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_marks(v) for v in value)
    return False


def _split_marks(raw: str) -> tuple[str, list[tuple[int, int]]]:
    """Remove the marks; return the clean text and the [start, end) character span of every block."""
    out, spans, pos, start = [], [], 0, None
    # Split at the marks rather than walk every character: renderings are thousands of characters long.
    for piece in _MARKS.split(raw):
        if piece == _OPEN_MARK:
            if start is not None:
                raise ValueError("nested {% generation %} blocks: a generation block may not contain another")
            start = pos
        elif piece == _CLOSE_MARK:
            spans.append((start, pos))
            start = None
        else:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


def render_with_spans(messages, template, *, bos_token="<s>", eos_token="</s>",
                      default_system_message=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendering of `messages` and the character spans of its generation blocks."""
    messages = _template_messages(messages)
    if _contains_marks(messages) or _contains_marks(default_system_message):
        raise ValueError("the conversation contains the Unicode noncharacters U+FDD0/U+FDD1, which the "
                         "renderer reserves to mark generation blocks")
    context = dict(messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=False)
    if default_system_message is not None:
        context["default_system_message"] = default_system_message
    return _split_marks(_compile(template).render(**context))


# ----------------------------------------------------------------------------------------------- tokenizing

def _tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """One pass over the whole rendering: ids and character offsets, no BOS/EOS added (the template writes them)."""
    from tokenizers import Tokenizer
    if isinstance(tokenizer, Tokenizer):
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _special_token(tokenizer, name: str, default: str) -> str:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, str) and value else default


def _supervised_ranges(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
                       ) -> tuple[list[tuple[int, int]], list[int]]:
    """Token ranges lying wholly inside each character span, and the span boundaries that cut a token.

    A token cut by a boundary is left out of the labels: supervising it would train on prompt text,
    and strict mode reports the cut anyway.
    """
    starts = [s for s, _ in offsets]
    ranges, split = [], []
    for s, e in spans:
        first = bisect_left(starts, s)
        stop = bisect_left(starts, e)
        if first > 0 and offsets[first - 1][1] > s:
            split.append(s)
        if stop > first and offsets[stop - 1][1] > e:
            split.append(e)
            stop -= 1
        if stop > first:
            ranges.append((first, stop))
    return ranges, split


def encode_conversation(messages, tokenizer, template, *, example_id, default_system_message=None) -> Encoded:
    text, char_spans = render_with_spans(
        messages, template, bos_token=_special_token(tokenizer, "bos_token", "<s>"),
        eos_token=_special_token(tokenizer, "eos_token", "</s>"), default_system_message=default_system_message)
    input_ids, offsets = _tokenize_with_offsets(tokenizer, text)
    token_spans, split = _supervised_ranges(offsets, char_spans)
    labels = [IGNORE_INDEX] * len(input_ids)
    for a, b in token_spans:
        labels[a:b] = input_ids[a:b]
    return Encoded(str(example_id), input_ids, labels, text, char_spans, token_spans, split)


# ----------------------------------------------------------------------------------------------- checking

def _token_name(token_id: int) -> str:
    return _CONTROL_NAMES.get(token_id, f"<control token {token_id}>")


def _turn_snippet(enc: Encoded, turn: int) -> str:
    if len(enc.char_spans) == len(enc.token_spans):
        s, e = enc.char_spans[turn]
        return f" (it begins {enc.text[s:min(e, s + 40)]!r})"
    return ""


def check_example(enc: Encoded, max_length: int | None) -> list[Finding]:
    """Everything strict mode requires of one encoded example; an empty list means the labels are sound."""
    out: list[Finding] = []

    def add(code: str, message: str) -> None:
        out.append(Finding(enc.example_id, code, message))

    if not enc.token_spans:
        add(ZERO_SUPERVISED_TOKENS, "no token is supervised: the rendering has no assistant turn inside a "
                                    "generation block, so the example would teach nothing")
        return out
    for pos in enc.split_boundaries:
        add(SPAN_BOUNDARY_INSIDE_TOKEN, f"a generation block starts or ends at character {pos}, in the middle "
                                        "of a token, so the labels cannot follow the template's boundary")
    for turn, (a, b) in enumerate(enc.token_spans, start=1):
        first, last = enc.input_ids[a], enc.input_ids[b - 1]
        if first != THINK_OPEN_ID:
            add(TURN_NOT_STARTING_WITH_THINK, f"supervised assistant turn {turn} starts with token id {first} "
                                              f"instead of [THINK] (id {THINK_OPEN_ID}){_turn_snippet(enc, turn - 1)}")
        if last != EOS_ID:
            add(TURN_NOT_ENDING_WITH_EOS, f"supervised assistant turn {turn} ends with token id {last} "
                                          f"instead of </s> (id {EOS_ID})")
        prompt_side = sorted({i for i in enc.input_ids[a:b]
                              if i < NUM_CONTROL_SLOTS and i not in _ASSISTANT_CONTROL_IDS})
        if prompt_side:
            names = ", ".join(f"{_token_name(i)} (id {i})" for i in prompt_side)
            add(PROMPT_CONTROL_TOKEN_SUPERVISED, f"supervised assistant turn {turn} contains prompt-side control "
                                                 f"token(s) {names}; the model would learn to write the prompt")
    if max_length is not None and len(enc.input_ids) > max_length:
        cut = [t for t, (_, b) in enumerate(enc.token_spans, start=1) if b > max_length]
        if cut:
            add(TRUNCATION_CUTS_SUPERVISED_TURN,
                f"the example has {len(enc.input_ids)} tokens; truncating to max_length {max_length} would cut "
                f"supervised assistant turn(s) {', '.join(map(str, cut))}")
    return out


# What each reasoning-contract code means, said of one assistant turn (codes: contract/reasoning.py).
_REASONING_EXPLAINED = {
    "missing_think_open": "it does not start with [THINK]",
    "unclosed_think": "its [THINK] is never closed by [/THINK]",
    "nested_think": "a second [THINK] opens inside the reasoning",
    "empty_reasoning": "the reasoning between [THINK] and [/THINK] is empty",
    "empty_answer": "there is no final answer after [/THINK]",
    "control_token_in_answer": "the final answer contains a control token such as [THINK], [INST] or </s>",
    "answer_copies_reasoning": "the final answer only repeats the reasoning",
    "conflicting_reasoning_shapes": "the reasoning is given twice (reasoning_content and [THINK] tags in content)",
    "unsupported_content": "its content is neither a string nor a list of text/thinking chunks",
}


def _reasoning_findings(example_id: str, messages) -> list[Finding]:
    out = []
    turn = 0
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        turn += 1
        for code in parse_assistant(message).codes:
            out.append(Finding(example_id, REASONING_CONTRACT_PREFIX + code,
                               f"assistant turn {turn} (message {index}) breaks the reasoning contract: "
                               f"{_REASONING_EXPLAINED.get(code, code)}"))
    return out


def _truncate(enc: Encoded, max_length: int) -> Encoded:
    spans = [(a, min(b, max_length)) for a, b in enc.token_spans if a < max_length]
    return Encoded(enc.example_id, enc.input_ids[:max_length], enc.labels[:max_length], enc.text,
                   enc.char_spans, spans, enc.split_boundaries)


# -------------------------------------------------------------------------------------------------- dataset

def _progress(rows, enabled: bool):
    if not enabled:
        return rows
    try:
        from tqdm import tqdm
    except ImportError:
        return rows
    return tqdm(rows, desc="encoding conversations", unit="ex", file=sys.stderr, leave=False)


def encode_dataset(rows, tokenizer, template, *, max_length, strict=True, drop_overlong=False,
                   default_system_message=None, progress=True) -> tuple[list[Encoded], dict]:
    """Encode SFT rows ({"id", "messages"}) into labelled examples.

    strict=True: any finding raises StrictMaskingError after every row has been looked at, except that
    drop_overlong=True turns truncation findings into counted drops. strict=False: findings become warning
    counts; examples without labels (or that cannot be rendered) are dropped, over-long ones truncated
    (or dropped, when drop_overlong=True asks for it).
    """
    summary = {"n_rows": 0, "n_kept": 0, "dropped": [], "warnings": Counter(),
               "supervised_tokens": 0, "total_tokens": 0}
    errors: list[Finding] = []
    if not has_generation_blocks(template):
        finding = Finding("<template>", NO_GENERATION_BLOCKS,
                          "the chat template has no {% generation %} block, so no token could be supervised; "
                          "use templates/mistral3_chat_template_assistant_mask.jinja")
        if strict:
            raise StrictMaskingError([finding], n_examples=0)
        summary["warnings"][NO_GENERATION_BLOCKS] += 1

    kept: list[Encoded] = []
    for index, row in enumerate(_progress(rows, progress)):
        summary["n_rows"] += 1
        example_id = str(row.get("id", f"row-{index}")) if isinstance(row, dict) else f"row-{index}"
        enc, row_errors = _encode_row(row, example_id, tokenizer, template, max_length, strict, drop_overlong,
                                      default_system_message, summary)
        errors.extend(row_errors)
        if enc is not None:
            kept.append(enc)
    if errors:
        raise StrictMaskingError(errors, n_examples=len({f.example_id for f in errors}))

    summary["n_kept"] = len(kept)
    summary["supervised_tokens"] = sum(e.n_supervised for e in kept)
    summary["total_tokens"] = sum(len(e.input_ids) for e in kept)
    summary["warnings"] = dict(summary["warnings"])
    return kept, summary


def _drop(summary: dict, finding: Finding) -> None:
    summary["dropped"].append({"id": finding.example_id, "code": finding.code, "message": finding.message})


def _encode_row(row, example_id, tokenizer, template, max_length, strict, drop_overlong, default_system_message,
                summary) -> tuple[Encoded | None, list[Finding]]:
    """One row: (the example to keep or None, the findings that are errors under the chosen mode)."""
    warnings = summary["warnings"]
    messages = row.get("messages") if isinstance(row, dict) else None
    try:
        enc = encode_conversation(messages, tokenizer, template, example_id=example_id,
                                  default_system_message=default_system_message)
    except (TemplateError, ValueError, TypeError) as e:
        finding = Finding(example_id, RENDER_FAILED, f"the conversation cannot be rendered with the chat template: {e}")
        if strict:
            return None, [finding]
        warnings[RENDER_FAILED] += 1
        _drop(summary, finding)
        return None, []

    findings = _reasoning_findings(example_id, messages) + check_example(enc, max_length)
    overlong = [f for f in findings if f.code == TRUNCATION_CUTS_SUPERVISED_TURN]
    others = [f for f in findings if f.code != TRUNCATION_CUTS_SUPERVISED_TURN]
    if strict:
        errors = others + ([] if drop_overlong else overlong)
        if errors:
            return None, errors
        if overlong:
            _drop(summary, overlong[0])
            return None, []
    else:
        for f in findings:
            warnings[f.code] += 1
        zero = [f for f in findings if f.code == ZERO_SUPERVISED_TOKENS]
        if zero or (overlong and drop_overlong):
            _drop(summary, (zero or overlong)[0])
            return None, []

    if max_length is not None and len(enc.input_ids) > max_length:
        if not overlong:
            warnings[TRUNCATED_UNSUPERVISED_TAIL] += 1
        enc = _truncate(enc, max_length)
        if not enc.token_spans:
            _drop(summary, Finding(example_id, ZERO_SUPERVISED_TOKENS,
                                   f"no supervised token is left after truncation to max_length {max_length}"))
            return None, []
    return enc, []
