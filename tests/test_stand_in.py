"""Issue 19: the stand-in model: generic pretraining material, the build through the project's own loop, the
released layout, the stamp and the cache."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from conftest import fast_stand_in
from contract.reasoning import validate_text
from train.tools import stand_in_corpus as corpus

C64_WORDS = re.compile(r"Commodore|C64|C-64|6502|6510|KERNAL|\bSID\b|VIC|CIA|PETSCII|\bPOKE\b|\bPEEK\b|\$[0-9]*[A-F]")


def test_generic_material_speaks_the_contract_and_knows_no_c64():
    convs = list(corpus.conversations(0, 400))
    assert convs == list(corpus.conversations(0, 400))                       # a pure function of the seed
    turns = [m for c in convs for m in c if m["role"] == "assistant"]
    assert all(validate_text(m["content"]).ok for m in turns)
    assert len(turns) > 1.5 * len(convs)                                     # most conversations have turns to share
    texts = [m["content"] for c in convs for m in c[1:]] + list(corpus.prose(0, 50))
    texts += [c[0]["content"] for c in convs]                                # the system prompts too
    assert not [t for t in texts if C64_WORDS.search(t)]
    # The self-check's prompts are never trained on.
    held = {p[1]["content"] for p in corpus.held_out_prompts(64)}
    assert not held & {c[1]["content"] for c in corpus.conversations(0, 4000, held)}


def test_stand_in_is_built_in_the_released_layout(stand_in_dir, tiny_model_dir):
    def tensors(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    built, random = tensors(stand_in_dir), tensors(tiny_model_dir)
    assert built.keys() == random.keys() and all(t.dtype == torch.bfloat16 for t in built.values())
    assert json.loads((stand_in_dir / "config.json").read_text())["architectures"] == ["Mistral3ForConditionalGeneration"]
    for name in ("tokenizer.json", "chat_template.jinja", "SYSTEM_PROMPT.txt", "generation_config.json"):
        assert (stand_in_dir / name).is_file(), name
    assert "STAND-IN" in (stand_in_dir / "README.md").read_text()
    stamp = json.loads((stand_in_dir / "stand_in.json").read_text())
    assert stamp["stand_in"] is True and stamp["phases"]["pretrain"]["steps"] == 2
    check = stamp["self_check"]
    assert check["total"] == 4 and check["passed"] + check["broke_contract"] + check["cut_by_budget"] == 4
    args = json.loads((stand_in_dir / "pretraining" / "pretrain.training_args.json").read_text())
    assert args["use_lora"] is False and args["phase"] == "dapt" and args["finished"] is True


def test_the_stand_in_is_cached_until_its_recipe_changes(stand_in_dir, capsys):
    from train.tools.tiny_model import cached, main, recipe
    before = (stand_in_dir / "model.safetensors").stat().st_mtime_ns
    with fast_stand_in():
        assert main(["--out", str(stand_in_dir), "--pretrain-steps", "2"]) == 0
        assert "up to date" in capsys.readouterr().out
        assert (stand_in_dir / "model.safetensors").stat().st_mtime_ns == before
        assert cached(stand_in_dir, recipe(False, 0, 2)) is not None
        assert cached(stand_in_dir, recipe(False, 0, 3)) is None             # more steps: another recipe
        assert cached(stand_in_dir, recipe(False, 1, 2)) is None             # another seed
    assert cached(stand_in_dir, recipe(False, 0, 2)) is None                 # the full corpus: another recipe


def test_the_corpus_written_for_pretraining_is_deterministic(tiny_model_dir, tmp_path):
    from train.tools.tiny_model import write_corpus
    with fast_stand_in():
        write_corpus(tmp_path / "a", tiny_model_dir, 0)
        write_corpus(tmp_path / "b", tiny_model_dir, 0)
    for split in ("train", "validation"):
        a = (tmp_path / "a" / f"{split}.jsonl").read_text()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_text()
    first = json.loads(a.splitlines()[0])["text"]
    assert not first.startswith("<s>") and "[/INST]" in a   # the packer adds <s> ... </s> around each document


def test_the_shipped_stand_in_matches_the_recipe_and_loads():
    """data/stand-in is what every first run fine-tunes: it must be this recipe's build, intact, small enough to
    ship, and answer in the contract."""
    from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
    from train.masking import read_template
    from train.pretrained import load_tokenizer
    from train.tools.generation import generate_turns, judge_generation, load_for_inference, prompt_ids
    from train.tools.tiny_model import CONTRACT_FLOOR, SHIPPED, STAMP, file_hashes, recipe, recipe_hash
    stamp = json.loads((SHIPPED / STAMP).read_text())
    assert stamp["recipe_sha256"] == recipe_hash(recipe(False, 0, None)), (
        "the shipped stand-in was built from another recipe: rebuild it with "
        "./run.sh tiny-model --force --out data/stand-in")
    assert stamp["files"] == file_hashes(SHIPPED) and stamp["contract_floor"] == CONTRACT_FLOOR
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 20 * 2**20
    assert stamp["self_check"]["rate"] >= 0.95 and stamp["self_check"]["total"] == 64
    # It loads and answers held-out generic prompts in the contract (a few of the build's own self-check).
    tokenizer = load_tokenizer(SHIPPED)
    default_system = (SHIPPED / "SYSTEM_PROMPT.txt").read_text(encoding="utf-8")
    template = read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)
    prompts = [prompt_ids(p, tokenizer, template, default_system)[1] for p in corpus.held_out_prompts(4)]
    model = load_for_inference(SHIPPED, None, torch.device("cpu"))
    generations = generate_turns(model, prompts, 200, 4, torch.device("cpu"))
    assert [judge_generation(g, tokenizer, 200).status for g in generations] == ["passed"] * 4


def test_a_first_run_copies_the_shipped_stand_in(tmp_path, capsys):
    from train.tools.tiny_model import SHIPPED, STAMP, file_hashes, main
    out = tmp_path / "tiny-ministral3"
    assert main(["--out", str(out)]) == 0
    assert "copied to" in capsys.readouterr().out
    assert file_hashes(out) == file_hashes(SHIPPED)
    assert (out / STAMP).read_bytes() == (SHIPPED / STAMP).read_bytes()
    assert main(["--out", str(out)]) == 0 and "up to date" in capsys.readouterr().out
    # A damaged copy is not taken for the stand-in: the next run copies it again.
    (out / "tokenizer.json").write_text("{}")
    assert main(["--out", str(out)]) == 0 and "copied to" in capsys.readouterr().out
