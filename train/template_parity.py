"""The training template against the model folder's own chat_template.jinja, token for token.

The training template (templates/, with {% generation %} blocks) must render exactly what the folder's template
renders, or the model is trained on other tokens than it is served with. The published templates have been
regenerated before, so the check runs against whatever folder a run uses (the stand-in's included): a few probe
conversations are rendered with both, generation markers aside, and tokenized.
"""
from __future__ import annotations

from pathlib import Path

from contract.errors import UserError

# Probe conversations: an explicit system prompt (the prompt contract always gives one), one and two turns.
PROBES = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What does POKE 53280,0 do?"},
     {"role": "assistant", "content": "[THINK]53280 is $D020, the border colour.[/THINK]It makes the border black."}],
    [{"role": "system", "content": "Answer briefly.\n\nTwo lines."},
     {"role": "user", "content": "LDA #$00"},
     {"role": "assistant", "content": "[THINK]Immediate load.[/THINK]A = 0, Z set."},
     {"role": "user", "content": "And STA $D021?"},
     {"role": "assistant", "content": "[THINK]$D021 is the background.[/THINK]The background turns black."}],
]


class TemplateDrift(UserError):
    """The training template and the model folder's template render different tokens."""


def first_difference(model_dir: str | Path, training_template: str | Path, tokenizer) -> str | None:
    """None when both templates give the same tokens for every probe; else where and how they first differ."""
    from train.masking import _special_token, _tokenize_with_offsets, read_template, render_with_spans

    folder_template = Path(model_dir) / "chat_template.jinja"
    if not folder_template.is_file():
        return None
    kw = dict(bos_token=_special_token(tokenizer, "bos_token", "<s>"),
              eos_token=_special_token(tokenizer, "eos_token", "</s>"))
    for n, messages in enumerate(PROBES):
        ours, theirs = (_tokenize_with_offsets(tokenizer, render_with_spans(messages, read_template(t), **kw)[0])[0]
                        for t in (training_template, folder_template))
        if ours != theirs:
            i = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            show = lambda ids: repr(tokenizer.decode(ids[i:i + 1])) if i < len(ids) else "the end"  # noqa: E731
            return (f"probe conversation {n + 1}, token {i}: {training_template} gives {show(ours)}, {folder_template} "
                    f"gives {show(theirs)} (context: {tokenizer.decode(ours[max(0, i - 8):i])!r})")
    return None


def check_template_parity(model_dir, training_template, tokenizer, strict: bool, warn) -> None:
    """Stop under strict mode, warn otherwise, when the two templates render different tokens."""
    difference = first_difference(model_dir, training_template, tokenizer)
    if difference is None:
        return
    message = (f"the training template and the model folder's template render different tokens: {difference}. The "
               "model would be trained on other tokens than it is served with; bring the training template in line "
               "with the folder's (or the folder's with the release)")
    if strict:
        raise TemplateDrift(message)
    warn(message + " (non-strict mode: training anyway)")
