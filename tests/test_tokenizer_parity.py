"""Real-vocabulary parity: our template + the HF `tokenizers` backend give the ids that mistral-common
(the reference encoder of Mistral models) gives for the same conversation.

The real Ministral 3 checkpoint is not available to the tests, so both sides are built from the Tekken
vocabulary that mistral-common ships (`mistral_common/data/tekken_240911.json`, 130072 byte-level BPE
tokens after 1000 control slots), with Ministral 3's control tokens placed at the ids of docs/model.md:

- our side: a `tokenizers` BPE tokenizer made from that vocabulary (merges derived from the ranks, the
  Tekken split regex, byte-level mapping, control tokens as special added tokens), used through
  `train.masking.encode_conversation` with the training template;
- their side: the same file declared as a v13 Tekken tokenizer (the version that knows think chunks),
  encoding a `ChatCompletionRequest` whose assistant turns are `ThinkChunk` + `TextChunk`.

Two deliberate choices keep the comparison meaningful:
- mistral-common never turns text inside a message into a control token, while a `tokenizer.json`
  turns a literal "[THINK]" anywhere into id 34. The model's system prompt contains a literal
  "[THINK]…[/THINK]" example, so it is handed to mistral-common as text/think chunks, which is how
  mistral-common itself represents such a system prompt. User text typed with control-token spellings is
  left out for the same reason (docs/specs/reasoning_contract.md, "differences on purpose").
- Assistant content is given as chunks: for a plain string, mistral-common strips trailing spaces of the
  answer, which the official HF template does not do.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

mistral_common = pytest.importorskip("mistral_common")

from contract.prompt import build_system_prompt  # noqa: E402
from contract.tokens import CONTROL_TOKEN_IDS, EOS_ID, THINK_OPEN_ID  # noqa: E402
from train import masking as M  # noqa: E402
from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT  # noqa: E402
from contract.prompt import STAND_IN_SYSTEM_PROMPT  # noqa: E402

TEKKEN_FILE = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
RAW_DIR = Path(__file__).resolve().parent.parent / "data" / "raw"

# Ministral 3's control slots (docs/model.md for the ids this project relies on; the rest as in Tekken v13).
MINISTRAL3_CONTROL = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[THINK]", 35: "[/THINK]",
}


def _control_names(n: int) -> list[str]:
    return [MINISTRAL3_CONTROL.get(i, f"<SPECIAL_{i}>") for i in range(n)]


def _byte_to_char() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character table (printable Latin-1 bytes map to
    themselves, the others to code points from 256 up)."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _hf_tokenizer(tekken: dict):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    n_control = tekken["config"]["default_num_special_tokens"]
    n_inner = tekken["config"]["default_vocab_size"] - n_control
    ranks = {base64.b64decode(e["token_bytes"]): e["rank"] for e in tekken["vocab"][:n_inner]}
    table = _byte_to_char()

    def chars(b: bytes) -> str:
        return "".join(table[x] for x in b)

    # tiktoken merges the adjacent pair whose concatenation has the lowest rank; listing every split of
    # every token, ordered by the rank of the result, makes HF's BPE do the same.
    merges = sorted((rank, ranks[tb[:i]], ranks[tb[i:]], chars(tb[:i]), chars(tb[i:]))
                    for tb, rank in ranks.items() for i in range(1, len(tb))
                    if tb[:i] in ranks and tb[i:] in ranks)
    controls = _control_names(n_control)
    vocab = {name: i for i, name in enumerate(controls)}
    vocab.update({chars(tb): rank + n_control for tb, rank in ranks.items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tekken["config"]["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in controls])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _mistral_tokenizer(tekken: dict, folder: Path):
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    spec = dict(tekken)
    spec["config"] = dict(tekken["config"], version="v13")
    spec.pop("image", None)  # text only: the image encoder is not part of this comparison
    spec["special_tokens"] = [{"rank": i, "token_str": name, "is_control": True}
                              for i, name in enumerate(_control_names(tekken["config"]["default_num_special_tokens"]))]
    path = folder / "tekken_ministral3_test.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return MistralTokenizer.from_file(str(path), mode=ValidationMode.finetuning)


@pytest.fixture(scope="module")
def tekken() -> dict:
    if not TEKKEN_FILE.is_file():
        pytest.skip(f"{TEKKEN_FILE} not shipped by this mistral-common version")
    return json.loads(TEKKEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_tok(tekken):
    return _hf_tokenizer(tekken)


@pytest.fixture(scope="module")
def mc_tok(tekken, tmp_path_factory):
    return _mistral_tokenizer(tekken, tmp_path_factory.mktemp("tekken"))


def test_control_tokens_sit_at_the_design_ids(hf_tok):
    from train.pretrained import check_control_tokens
    check_control_tokens(hf_tok, source="tekken_240911 + Ministral 3 controls")
    assert all(hf_tok.convert_tokens_to_ids(t) == i for t, i in CONTROL_TOKEN_IDS.items())


def test_plain_text_bpe_matches_tiktoken(hf_tok, mc_tok):
    texts = [p.read_text(encoding="utf-8")[:6000] for p in sorted(RAW_DIR.glob("*.txt"))[:6]]
    texts += ["Grüße! 日本語で $D020 は？ 😀🎮 ＄Ｄ０２０ e\u0301", "  \n\n\t  spaced \r\n out  ", "1234567890 $FFFF"]
    raw = mc_tok.instruct_tokenizer.tokenizer
    for text in texts:
        assert hf_tok.encode(text, add_special_tokens=False) == raw.encode(text, bos=False, eos=False)


def _system_chunks(system: str):
    """The system prompt as mistral-common represents it: literal [THINK]…[/THINK] becomes a think chunk."""
    from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
    chunks = []
    for part in re.split(r"(\[THINK\].*?\[/THINK\])", system, flags=re.S):
        if part.startswith("[THINK]") and part.endswith("[/THINK]"):
            chunks.append(ThinkChunk(thinking=part[len("[THINK]"):-len("[/THINK]")]))
        elif part:
            chunks.append(TextChunk(text=part))
    return chunks


TURNS = [
    ("What does $D020 do?", "$D020 (53280) belongs to the VIC-II.", "It sets the border colour."),
    ("Cycles for LDA ($FB),Y?\n", "Indirect indexed: 5 cycles, +1 on a page crossing.", "5 (+1 if a page is crossed)."),
    ("Grüße – was macht $D021? 😀", "Hintergrundfarbe, Register 33 des VIC-II.\n\nSicher.", "Die Hintergrundfarbe."),
]


def _conversations(system: str):
    from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    ours = [{"role": "system", "content": system}]
    theirs = [SystemMessage(content=_system_chunks(system))]
    shapes = ["inline", "chunks", "field"]
    for (user, reasoning, answer), shape in zip(TURNS, shapes):
        ours.append({"role": "user", "content": user})
        if shape == "inline":
            ours.append({"role": "assistant", "content": f"[THINK]{reasoning}[/THINK]{answer}"})
        elif shape == "chunks":
            ours.append({"role": "assistant", "content": [{"type": "thinking", "thinking": reasoning},
                                                          {"type": "text", "text": answer}]})
        else:
            ours.append({"role": "assistant", "reasoning_content": reasoning, "content": answer})
        theirs += [UserMessage(content=user),
                   AssistantMessage(content=[ThinkChunk(thinking=reasoning), TextChunk(text=answer)])]
    return ours, ChatCompletionRequest(messages=theirs)


def test_conversation_ids_match_mistral_common_v13(hf_tok, mc_tok):
    system = build_system_prompt(STAND_IN_SYSTEM_PROMPT)
    messages, request = _conversations(system)
    template = M.read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)
    enc = M.encode_conversation(messages, hf_tok, template, example_id="parity")
    reference = mc_tok.encode_chat_completion(request).tokens
    assert enc.input_ids == reference

    # Each supervised span is exactly what mistral-common encodes for that assistant message.
    instruct = mc_tok.instruct_tokenizer
    assistants = [m for m in request.messages if m.role == "assistant"]
    spans = [enc.input_ids[a:b] for a, b in enc.token_spans]
    assert spans == [instruct.encode_assistant_message(m, is_before_last_user_message=False) for m in assistants]
    assert all(s[0] == THINK_OPEN_ID and s[-1] == EOS_ID for s in spans)
    assert M.check_example(enc, max_length=None) == []


def test_first_turn_without_system_message_matches_too(hf_tok, mc_tok):
    """No system message: our renderer inserts the model default, mistral-common is given it explicitly."""
    from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    user, reasoning, answer = TURNS[0]
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": f"[THINK]{reasoning}[/THINK]{answer}"}]
    enc = M.encode_conversation(messages, hf_tok, M.read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH), example_id="default",
                                default_system_message=STAND_IN_SYSTEM_PROMPT)
    request = ChatCompletionRequest(messages=[
        SystemMessage(content=_system_chunks(STAND_IN_SYSTEM_PROMPT)), UserMessage(content=user),
        AssistantMessage(content=[ThinkChunk(thinking=reasoning), TextChunk(text=answer)])])
    assert enc.input_ids == mc_tok.encode_chat_completion(request).tokens
