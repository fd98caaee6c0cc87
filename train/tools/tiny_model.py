"""Build the tiny local Ministral 3 checkpoint: the stand-in model of the default run (docs/model.md).

Same classes, config layout, on-disk key names, control-token ids and file set as the released
Ministral-3-8B Reasoning checkpoint, scaled down so the whole default flow runs on 2 CPU cores.
Deterministic: the same seed and the same sample corpus give byte-identical files.

    python -m train.tools.tiny_model --out models/tiny-ministral3 [--text-only] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from contract.prompt import STAND_IN_SYSTEM_PROMPT
from contract.tokens import (BOS_ID, CONTROL_TOKEN_IDS, EOS_ID, NUM_CONTROL_SLOTS, OTHER_CONTROL_TOKEN_IDS,
                             PAD_ID)
from train.config import PROJECT_ROOT
from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B

SAMPLE_RAW_DIR = PROJECT_ROOT / "data" / "raw"

# Tekken splits text with this tiktoken-style pattern before byte-level BPE.
TEKKEN_PRETOKENIZE_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small enough to train in minutes on 2 cores. Depth is what the format needs: the model must know whether
# it already wrote this turn's [/THINK] (the system prompt holds a literal [THINK]..[/THINK] too), which
# 2 layers mostly guessed from how the last sentence read (docs/recipe.md, "The tiny preset").
TINY_TEXT = dict(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, intermediate_size=768, vocab_size=4096)
# Weight init std. With transformers' usual 0.02 the frozen random lm_head rows are so short that even a
# perfectly aligned hidden state cannot push one logit far above the others (a loss floor of several
# nats), and LoRA, which never touches lm_head, cannot fix that. 0.1 removes the floor.
TINY_INIT_STD = 0.1
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   head_dim=16, image_size=64, patch_size=16)

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


def build(out: str | os.PathLike, text_only: bool = False, seed: int = 0, raw_dir: Path = SAMPLE_RAW_DIR,
          text_size: dict | None = None, initializer_range: float = TINY_INIT_STD) -> Path:
    # Single-threaded BPE training keeps merges (and so the files) identical from run to run.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import (GenerationConfig, Ministral3Config, Ministral3ForCausalLM, Mistral3Config,
                              Mistral3ForConditionalGeneration, PixtralVisionConfig)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = dict(TINY_TEXT, **(text_size or {}))
    tok = build_tokenizer(sample_texts(raw_dir), size["vocab_size"])
    if len(tok) > size["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tok)} entries, more than vocab_size {size['vocab_size']}")

    text_cfg = Ministral3Config(**(TEXT_CONFIG_8B | size), rope_parameters=dict(ROPE_PARAMETERS),
                                initializer_range=initializer_range)
    torch.manual_seed(seed)
    if text_only:
        text_cfg.architectures = ["Ministral3ForCausalLM"]
        model = Ministral3ForCausalLM(text_cfg)
    else:
        cfg = Mistral3Config(vision_config=PixtralVisionConfig(**TINY_VISION), text_config=text_cfg,
                             spatial_merge_size=2, image_token_index=10, tie_word_embeddings=False,
                             architectures=["Mistral3ForConditionalGeneration"])
        model = Mistral3ForConditionalGeneration(cfg)
    # Released weights are BF16; keep the same dtype on disk.
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)  # transformers 5 writes the real on-disk names (language_model.model.*)

    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(official_style_template(STAND_IN_SYSTEM_PROMPT), encoding="utf-8")
    (out / "SYSTEM_PROMPT.txt").write_text(STAND_IN_SYSTEM_PROMPT, encoding="utf-8")
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=True, temperature=0.7,
                     top_p=0.95, max_new_tokens=1024).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the checkpoint into")
    ap.add_argument("--text-only", action="store_true", help="Ministral3ForCausalLM instead of the full VLM layout")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = build(args.out, text_only=args.text_only, seed=args.seed)
    files = sorted(p.name for p in out.iterdir())
    print(f"tiny {'text-only ' if args.text_only else ''}Ministral 3 checkpoint written to {out} "
          f"in {time.perf_counter() - t0:.1f}s: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
