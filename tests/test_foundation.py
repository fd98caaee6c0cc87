"""Issue 2: tiny checkpoint, tokenizer facts, loader guarantees, run.sh surface."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from contract.tokens import CONTROL_TOKEN_IDS
from train.pretrained import LINEAR_PROJECTIONS, CheckpointError, load_text_model, load_tokenizer, lora_target_regex
from train.tools.tiny_model import build

ROOT = Path(__file__).resolve().parent.parent


def test_build_is_byte_identical(tmp_path, tiny_model_dir):
    again = build(tmp_path / "again", seed=0)
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_model_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_vlm_layout_matches_the_release(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "mistral3" and cfg["architectures"] == ["Mistral3ForConditionalGeneration"]
    text = cfg["text_config"]
    assert text["model_type"] == "ministral3" and text["tie_word_embeddings"] is False
    rope = text["rope_parameters"]
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"],
            rope["llama_4_scaling_beta"]) == ("yarn", 16.0, 16384, 0.1)
    from safetensors import safe_open
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "language_model.lm_head.weight" in keys and "language_model.model.embed_tokens.weight" in keys
    assert any(k.startswith("vision_tower.") for k in keys)
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    for name in ("tokenizer.json", "chat_template.jinja", "SYSTEM_PROMPT.txt", "generation_config.json"):
        assert (tiny_model_dir / name).is_file()
    prompt = (tiny_model_dir / "SYSTEM_PROMPT.txt").read_text()
    assert "[THINK]" in prompt and "[/THINK]" in prompt


def test_control_token_ids(tiny_tokenizer):
    for token, idx in CONTROL_TOKEN_IDS.items():
        assert tiny_tokenizer.convert_tokens_to_ids(token) == idx
    assert tiny_tokenizer.encode("[THINK]", add_special_tokens=False) == [34]
    assert tiny_tokenizer.encode("[/THINK]", add_special_tokens=False) == [35]
    # Like the real tokenizer.json: no BOS added by a plain encode.
    assert tiny_tokenizer.encode("LDA #$00", add_special_tokens=True)[0] != 1
    assert tiny_tokenizer.convert_ids_to_tokens(500) == "<SPECIAL_500>"
    assert len(tiny_tokenizer) > 1000


def test_loader_matches_transformers_vlm(tiny_model_dir):
    from transformers import Mistral3ForConditionalGeneration
    ours = load_text_model(tiny_model_dir, dtype=torch.float32)
    theirs = Mistral3ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 17, 1200, 1300, 18, 3, 1500, 1600, 4, 34, 1700, 35, 1800, 2]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(input_ids=ids).logits)
    assert not any("vision" in n for n, _ in ours.named_parameters())


def test_loader_reads_text_only_checkpoint(tiny_text_model_dir):
    from transformers import Ministral3ForCausalLM
    ours = load_text_model(tiny_text_model_dir, dtype=torch.float32)
    theirs = Ministral3ForCausalLM.from_pretrained(tiny_text_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 3, 1500, 4, 34]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_loader_rejects_missing_language_model_tensor(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["language_model.model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.mlp\.down_proj"):
        load_text_model(bad)


def test_loader_rejects_wrong_control_ids(tmp_path, tiny_model_dir):
    bad = tmp_path / "badtok"
    shutil.copytree(tiny_model_dir, bad)
    tok = json.loads((bad / "tokenizer.json").read_text())
    # Swap the THINK tokens: a tokenizer from another model family would look like this.
    for entry in tok["added_tokens"]:
        if entry["content"] == "[THINK]":
            entry["content"] = "<SPECIAL_34>"
    vocab = tok["model"]["vocab"]
    if "[THINK]" in vocab:
        vocab["<SPECIAL_34>"] = vocab.pop("[THINK]")
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=r"\[THINK\]"):
        load_tokenizer(bad)


def test_lora_targets_exclude_vision_tower(tiny_model_dir):
    from transformers import Mistral3ForConditionalGeneration
    vlm = Mistral3ForConditionalGeneration.from_pretrained(tiny_model_dir)
    names = [n for n, _ in vlm.named_modules()]
    hit = [n for n in names if re.fullmatch(lora_target_regex(LINEAR_PROJECTIONS), n)]
    assert hit and all("language_model" in n for n in hit)
    assert len(hit) == 7 * vlm.config.text_config.num_hidden_layers
    vision_linears = [n for n in names if n.startswith("model.vision_tower") and n.endswith("_proj")]
    assert vision_linears, "the tiny tower should have projections the plain names would match"


def test_run_sh_help_lists_every_verb():
    out = subprocess.run([str(ROOT / "run.sh"), "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("setup", "test", "tiny-model", "data", "inspect", "check", "eval", "bench", "--phase"):
        assert verb in out
