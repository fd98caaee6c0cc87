"""tekken.json: the stand-in's vocabulary in mistral-common's Tekken format, read back by mistral-common itself
(the loader vLLM's --tokenizer-mode mistral and llama.cpp's converter use) and encoding like tokenizer.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.errors import UserError
from contract.tokens import CONTROL_TOKEN_IDS

mistral_common = pytest.importorskip("mistral_common")
RAW_DIR = Path(__file__).resolve().parent.parent / "data" / "raw"


def tekkenizer(folder: Path):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    return MistralTokenizer.from_file(str(folder / "tekken.json")).instruct_tokenizer.tokenizer


def test_tekken_json_encodes_like_tokenizer_json(tiny_model_dir, tiny_tokenizer):
    tekken = tekkenizer(tiny_model_dir)
    assert tekken.n_words == len(tiny_tokenizer)
    assert all(tekken.get_special_token(name) == i for name, i in CONTROL_TOKEN_IDS.items())
    texts = [p.read_text(encoding="utf-8")[:4000] for p in sorted(RAW_DIR.rglob("*.txt"))[:8]]
    texts += ["Grüße! 日本語で $D020 は？ 😀🎮 ＄Ｄ０２０ e\u0301", "  \n\n\t  spaced \r\n out  ", "1234567890 $FFFF"]
    for text in texts:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tekken.encode(text, bos=False, eos=False) == ids, text[:60]
        assert tekken.decode(ids) == text


def test_write_tekken_applies_to_an_existing_folder(tiny_model_dir, tmp_path):
    from train.tools.model_files import write_tekken
    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    write_tekken(folder)
    assert (folder / "tekken.json").read_bytes() == (tiny_model_dir / "tekken.json").read_bytes()


def test_a_vocabulary_not_laid_out_as_tekken_is_refused_by_name(tiny_model_dir, tmp_path):
    from train.tools.model_files import write_tekken
    folder = tmp_path / "old"
    folder.mkdir()
    data = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    first, second = (next(t for t, i in vocab.items() if i == n) for n in (1000, 1001))
    vocab[first], vocab[second] = 1001, 1000  # two bytes swapped: no longer byte order
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=r"tokenizer.json: ids 1000\.\.1255 are not the 256 bytes in byte order"):
        write_tekken(folder)
