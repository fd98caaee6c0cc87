"""The files a model folder carries besides its weights, for the locally built models (the stand-in, the
random-weight shape checks and the bench fixture): a Tekken-like tokenizer.json with the control tokens at the
real ids, an official-style chat_template.jinja, SYSTEM_PROMPT.txt and generation_config.json (docs/model.md);
and the text config those models are built from."""
from __future__ import annotations

import json
import os
from pathlib import Path

from contract.errors import UserError
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
# mistral-common's tokenizer file, and the version it is declared as: v13 is the first that knows think chunks,
# which vLLM's mistral reasoning parser needs.
TEKKEN_FILE, TEKKEN_VERSION = "tekken.json", "v13"
# How build_tokenizer lays the vocabulary out; part of the stand-in's recipe, so a cached stand-in with an older
# layout (bytes not in byte order, which tekken.json cannot describe) is rebuilt.
TOKENIZER_LAYOUT = "tekken-ranks"
# The files write_side_files writes next to the weights.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", TEKKEN_FILE, "chat_template.jinja", "SYSTEM_PROMPT.txt",
              "generation_config.json")

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


def byte_chars() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character table (tokenizer.json spells bytes this way)."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    printable = [b for b in range(256) if chr(b) in alphabet]
    table, shift = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def control_names() -> list[str]:
    named = {i: t for t, i in (CONTROL_TOKEN_IDS | OTHER_CONTROL_TOKEN_IDS).items()}
    return [named.get(i, f"<SPECIAL_{i}>") for i in range(NUM_CONTROL_SLOTS)]


def tekken_pre_tokenizer():
    """Tekken's split pattern, then byte-level mapping: what both the trainer and the rank-ordered BPE use."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def tokenizer_from_ranks(ranks: dict[bytes, int]):
    """A tokenizer.json tokenizer that encodes exactly as Tekken (tiktoken) does with these ranks: id = rank + 1000.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; listing every split of every
    token, ordered by the rank of the result, with ignore_merges (a whole piece in the vocabulary is one
    token, as in tiktoken) makes the `tokenizers` BPE do the same. This is how the released tokenizer.json
    relates to its tekken.json.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    table = byte_chars()

    def chars(b: bytes) -> str:
        return "".join(table[x] for x in b)

    merges = sorted((rank, ranks[tb[:i]], chars(tb[:i]), chars(tb[i:]))
                    for tb, rank in ranks.items() for i in range(1, len(tb))
                    if tb[:i] in ranks and tb[i:] in ranks)
    controls = control_names()
    vocab = {name: i for i, name in enumerate(controls)} | {chars(tb): rank + NUM_CONTROL_SLOTS
                                                            for tb, rank in ranks.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], ignore_merges=True))
    tok.pre_tokenizer = tekken_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in controls])
    # No post-processor: like the real tokenizer.json, plain encodes add no BOS; the template writes <s>.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=262144, padding_side="right", add_bos_token=False, add_eos_token=False)


def build_tokenizer(texts: list[str], vocab_size: int):
    """A Tekken vocabulary learnt from `texts`: 1000 control slots, the 256 bytes in byte order, then the BPE
    merges in the order they were learnt; single-threaded so the merges are the same on every run.

    Laid out as Tekken is (rank = id - 1000, ranks 0..255 the single bytes), so tekken.json (write_tekken)
    describes the same tokenizer and llama.cpp's converter and mistral-common read it like the real one.
    """
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = tekken_pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=control_names(), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    to_byte = {c: b for b, c in byte_chars().items()}
    learnt = sorted((i, t) for t, i in tok.get_vocab().items() if i >= NUM_CONTROL_SLOTS)
    ranks = {bytes([b]): b for b in range(256)}
    for _, token in learnt:  # the trainer numbers merged tokens in the order it learnt them
        ranks.setdefault(bytes(to_byte[c] for c in token), len(ranks))
    return tokenizer_from_ranks(ranks)


def tekken_ranks(tokenizer) -> dict[bytes, int]:
    """The Tekken ranks of a tokenizer laid out as Tekken (the real one, or build_tokenizer's); UserError if not."""
    to_byte = {c: b for b, c in byte_chars().items()}
    vocab = tokenizer.get_vocab()
    ranks, source = {}, getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    for token, i in vocab.items():
        if i < NUM_CONTROL_SLOTS:
            continue
        try:
            ranks[bytes(to_byte[c] for c in token)] = i - NUM_CONTROL_SLOTS
        except KeyError:
            raise UserError(f"{source}: token {token!r} (id {i}) is not byte-level BPE; tekken.json cannot "
                            "describe it") from None
    misplaced = [b for b in range(256) if ranks.get(bytes([b])) != b]
    if misplaced or sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{source}: ids {NUM_CONTROL_SLOTS}..{NUM_CONTROL_SLOTS + 255} are not the 256 bytes in "
                        f"byte order (first misplaced byte: {misplaced[:1]}), or the ids have gaps; Tekken needs "
                        "that layout. A stand-in built before the Tekken layout: rebuild it with ./run.sh tiny-model")
    return ranks


def write_tekken(folder: str | os.PathLike, tokenizer=None, version: str = TEKKEN_VERSION) -> Path:
    """folder/tekken.json: the folder's tokenizer in mistral-common's Tekken format (what vLLM's
    --tokenizer-mode mistral, its mistral reasoning parser and llama.cpp's converter read).

    `tokenizer` defaults to the folder's own tokenizer.json; it must be laid out as Tekken (tekken_ranks) and
    encode as tiktoken does with those ranks (tokenizer_from_ranks): checked here by comparing merges.
    """
    import base64

    folder = Path(folder)
    if tokenizer is None:
        from transformers import PreTrainedTokenizerFast

        if not (folder / "tokenizer.json").is_file():
            raise UserError(f"{folder / 'tokenizer.json'}: missing; tekken.json is written from it")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        tokenizer.name_or_path = str(folder / "tokenizer.json")
    ranks = tekken_ranks(tokenizer)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    expected = json.loads(tokenizer_from_ranks(ranks).backend_tokenizer.to_str())["model"]["merges"]
    if model.get("merges") != expected or not model.get("ignore_merges"):
        raise UserError(f"{tokenizer.name_or_path or folder}: its BPE merges are not Tekken's rank order, so "
                        "tekken.json would encode differently; rebuild the stand-in with ./run.sh tiny-model")
    controls = [tokenizer.convert_ids_to_tokens(i) for i in range(NUM_CONTROL_SLOTS)]
    vocab = []
    for token_bytes, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        try:
            text = token_bytes.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(token_bytes).decode("ascii"), "token_str": text})
    spec = {"config": {"pattern": TEKKEN_PRETOKENIZE_REGEX, "num_vocab_tokens": len(vocab),
                       "default_vocab_size": len(vocab) + NUM_CONTROL_SLOTS,
                       "default_num_special_tokens": NUM_CONTROL_SLOTS, "version": version},
            "vocab": vocab,
            "special_tokens": [{"rank": i, "token_str": name, "is_control": True} for i, name in enumerate(controls)]}
    path = folder / TEKKEN_FILE
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def write_side_files(out: Path, tokenizer, system_prompt: str = STAND_IN_SYSTEM_PROMPT) -> None:
    """tokenizer files (tokenizer.json and tekken.json), chat_template.jinja, SYSTEM_PROMPT.txt and generation_config.json into `out`."""
    from transformers import GenerationConfig

    tokenizer.save_pretrained(out)
    write_tekken(out, tokenizer)
    (out / "chat_template.jinja").write_text(official_style_template(system_prompt), encoding="utf-8")
    (out / "SYSTEM_PROMPT.txt").write_text(system_prompt, encoding="utf-8")
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=True, temperature=0.7,
                     top_p=0.95, max_new_tokens=1024).save_pretrained(out)
