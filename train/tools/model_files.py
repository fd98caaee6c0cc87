"""The files a model folder carries besides its weights, for the locally built models (the stand-in, the
random-weight shape checks and the bench fixture): a Tekken-like tokenizer.json with the control tokens at the
real ids, an official-style chat_template.jinja, SYSTEM_PROMPT.txt and generation_config.json (docs/model.md);
and the text config those models are built from."""
from __future__ import annotations

import json
import os
from pathlib import Path

from contract.prompt import STAND_IN_SYSTEM_PROMPT
from contract.tokens import (BOS_ID, CONTROL_TOKEN_IDS, EOS_ID, NUM_CONTROL_SLOTS, OTHER_CONTROL_TOKEN_IDS,
                             PAD_ID)
from train.config import PROJECT_ROOT

SAMPLE_RAW_DIR = PROJECT_ROOT / "data" / "raw"

# The bench fixture's text model (train/tools/bench_fixture.py writes it, train/tools/bench.py's cpu preset
# trains it): Ministral 3's layout at a size whose epoch of LoRA steps a 2-core CPU runs in minutes, with a
# vocabulary large enough that the LM head and the loss weigh in the step as they do in the real model's.
BENCH_TEXT = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                  intermediate_size=1536, vocab_size=32768)


def text_config(shapes: dict, **fields):
    """The Ministral3Config of these shapes (the rest as the released 8B text model's), with the real rope layout."""
    from transformers import Ministral3Config

    from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B
    return Ministral3Config(**(TEXT_CONFIG_8B | shapes), rope_parameters=dict(ROPE_PARAMETERS), **fields)

# Tekken splits text with this tiktoken-style pattern before byte-level BPE.
TEKKEN_PRETOKENIZE_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Official-style Reasoning template (docs/model.md): no newlines or role headers, default system prompt
# when none is given, thinking as inline text, as a "thinking" chunk or as reasoning_content.
# No {% generation %} blocks: this is what the released checkpoint ships.
OFFICIAL_STYLE_TEMPLATE = """{%- set default_system_message = @DEFAULT@ %}
{%- macro render_content(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}
{%- for chunk in content -%}
{%- if chunk['type'] == 'text' -%}{{- chunk['text'] -}}
{%- elif chunk['type'] == 'thinking' -%}{{- '[THINK]' + chunk['thinking'] + '[/THINK]' -}}
{%- else -%}{{- raise_exception('Unsupported content chunk type: ' + chunk['type']) -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{{- bos_token }}
{%- if messages and messages[0]['role'] == 'system' %}
{%- set system_message = render_content(messages[0]['content']) %}
{%- set loop_messages = messages[1:] %}
{%- else %}
{%- set system_message = default_system_message %}
{%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}
{%- for message in loop_messages %}
{%- if message['role'] == 'user' %}
{{- '[INST]' + render_content(message['content']) + '[/INST]' }}
{%- elif message['role'] == 'assistant' %}
{%- if message['reasoning_content'] is defined and message['reasoning_content'] %}
{{- '[THINK]' + message['reasoning_content'] + '[/THINK]' }}
{%- endif %}
{{- render_content(message['content']) + eos_token }}
{%- else %}
{{- raise_exception('Only user and assistant roles are supported after an optional first system message, got: ' + message['role']) }}
{%- endif %}
{%- endfor %}
"""


def official_style_template(default_system_prompt: str) -> str:
    # json.dumps gives a double-quoted literal with escapes that Jinja parses back to the same string.
    return OFFICIAL_STYLE_TEMPLATE.replace("@DEFAULT@", json.dumps(default_system_prompt, ensure_ascii=False))


def sample_texts(raw_dir: Path = SAMPLE_RAW_DIR) -> list[str]:
    """The shipped sample corpus, in a fixed order, as BPE training text."""
    # README/NOTICES/licence files describe the corpus; they are not corpus text.
    skip = ("README", "NOTICES", "LICENSE", "COPYING")
    files = sorted(p for p in raw_dir.rglob("*") if p.suffix in {".txt", ".md"} and p.is_file()
                   and not p.name.upper().startswith(skip))
    if not files:
        raise FileNotFoundError(f"no .txt/.md sample text under {raw_dir}: the tiny tokenizer is trained on it")
    return [p.read_text(encoding="utf-8", errors="replace") for p in files] + [STAND_IN_SYSTEM_PROMPT]


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE after the 1000 control slots; single-threaded so the merges are the same on every run."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    named = {i: t for t, i in (CONTROL_TOKEN_IDS | OTHER_CONTROL_TOKEN_IDS).items()}
    specials = [named.get(i, f"<SPECIAL_{i}>") for i in range(NUM_CONTROL_SLOTS)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # No post-processor: like the real tokenizer.json, plain encodes add no BOS; the template writes <s>.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=262144, padding_side="right", add_bos_token=False, add_eos_token=False)


def write_side_files(out: Path, tokenizer, system_prompt: str = STAND_IN_SYSTEM_PROMPT) -> None:
    """tokenizer files, chat_template.jinja, SYSTEM_PROMPT.txt and generation_config.json into `out`."""
    from transformers import GenerationConfig

    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(official_style_template(system_prompt), encoding="utf-8")
    (out / "SYSTEM_PROMPT.txt").write_text(system_prompt, encoding="utf-8")
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=True, temperature=0.7,
                     top_p=0.95, max_new_tokens=1024).save_pretrained(out)
