"""Build the stand-in model of the default run: a tiny local Ministral 3 checkpoint (docs/model.md).

    ./run.sh tiny-model --out models/tiny-ministral3 [--text-only] [--seed 0] [--untrained] [--force]

Two steps, both deterministic for a seed at a fixed thread count:
1. build(): random weights with the same classes, config layout, on-disk key names, control-token ids and file
   set as the released Ministral-3-8B Reasoning checkpoint, scaled down (what the tests use; --untrained stops
   here).
2. pretrain(): like the real model, the stand-in must already answer [THINK]reasoning[/THINK]answer</s> and know
   no C64 before any fine-tuning. The toolkit's own loop (train.main, --no-use-lora: every weight trains, in
   fp32; the DAPT path: packed text, every token a label) trains it on generic material
   (train/tools/stand_in_corpus.py). The trained text weights go back into the released layout, in bf16.
   A greedy check on held-out generic prompts says whether it answers in the contract.

The result is cached: stand_in.json in the folder holds a hash of the recipe (sizes, corpus generator version,
steps, seed, ...), and a folder whose stamp matches is not built again. The repository ships the built stand-in
in data/stand-in/ (SHIPPED): when its recipe hash is the current recipe's, it is copied instead of built, so no
first run spends minutes pretraining and every machine fine-tunes the same weights. `--force` builds anyway;
`./run.sh tiny-model --force --out data/stand-in` rebuilds the shipped copy.

stand_in.json also declares the stand-in's contract floor (CONTRACT_FLOOR): the pass rate the post-training
check holds its fine-tunes to, calibrated between good and deliberately broken pipelines (docs/recipe.md,
"Calibrating the contract floor"); a real checkpoint is held to 0.95.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from contract.errors import UserError
from train.config import PROJECT_ROOT
from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B
from train.tools import stand_in_corpus
from train.tools.model_files import SAMPLE_RAW_DIR, SIDE_FILES, TOKENIZER_LAYOUT, build_tokenizer, sample_texts, write_side_files

# Small enough to train in minutes on 2 cores. Depth is what the format needs: the model must know whether
# it already wrote this turn's [/THINK] (the system prompt holds a literal [THINK]..[/THINK] too), which
# 2 layers mostly guessed from how the last sentence read (docs/recipe.md, "The tiny preset").
TINY_TEXT = dict(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, intermediate_size=768, vocab_size=4096)
# Weight init std of the random checkpoint. With transformers' usual 0.02 the frozen random lm_head rows are so
# short that even a perfectly aligned hidden state cannot push one logit far above the others (a loss floor of
# several nats), and LoRA, which never touches lm_head, cannot fix that. 0.1 removes the floor.
TINY_INIT_STD = 0.1
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   head_dim=16, image_size=64, patch_size=16)
# Generic material mixed into the tokenizer's training text, so everyday words are tokens as in a real
# vocabulary, not only the C64 sample corpus's.
TOKENIZER_CONVERSATIONS, TOKENIZER_PROSE = 2000, 200

# The stand-in's pretraining: train.main flags of each phase (on top of STAND_IN_COMMON), and how much
# material it sees. Pretraining trains every weight, so the usual 0.02 init works (see TINY_INIT_STD for why
# the random test checkpoint differs).
STAND_IN_INIT_STD = 0.02
STAND_IN_CORPUS = dict(conversations=12000, prose=2000, validation_conversations=100, validation_prose=20)
STAND_IN_COMMON = ["--phase", "dapt", "--no-use-lora", "--max-length", "512", "--micro-batch-size", "16",
                   "--grad-accum", "1", "--warmup-ratio", "0.05", "--eval-interval", "100000",
                   "--save-interval", "100000", "--eval-max-batches", "8", "--log-interval", "10",
                   "--attention", "sdpa", "--compile"]
# 400 steps (0.87 epoch): with fewer, the stand-in still answers its own held-out prompts in the contract but
# keeps it on fewer C64 questions, and the flow's checks after SFT fail more often (docs/recipe.md).
STAND_IN_PHASES = {"pretrain": ["--lr", "2e-3", "--max-steps", "400"]}
SELF_CHECK_PROMPTS = 64
SELF_CHECK_BUDGET = 512   # new tokens per held-out generic prompt; their answers take well under 200
STAMP = "stand_in.json"
SHIPPED = PROJECT_ROOT / "data" / "stand-in"
# The share of sampled post-training generations that must keep the contract after the tiny preset's fine-tune:
# above every broken pipeline of the calibration and below every good seed (docs/recipe.md, "Calibrating the
# contract floor"). A 4.5M-parameter model cannot be held to the real model's 0.95.
CONTRACT_FLOOR = 0.60


class StandInError(UserError):
    """The stand-in model could not be built; the message says which phase and where its log is."""


def build(out: str | os.PathLike, text_only: bool = False, seed: int = 0, raw_dir: Path = SAMPLE_RAW_DIR,
          text_size: dict | None = None, initializer_range: float = TINY_INIT_STD) -> Path:
    """The random-weight checkpoint: byte-identical for the same seed and sample corpus."""
    import torch
    from transformers import (Ministral3Config, Ministral3ForCausalLM, Mistral3Config,
                              Mistral3ForConditionalGeneration, PixtralVisionConfig)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = dict(TINY_TEXT, **(text_size or {}))
    tok = build_tokenizer(sample_texts(raw_dir) + generic_texts(), size["vocab_size"])
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

    write_side_files(out, tok)
    return out


def generic_texts() -> list[str]:
    convs = stand_in_corpus.conversations(0, TOKENIZER_CONVERSATIONS)
    return ([" ".join(m["content"] for m in c[1:]) for c in convs]
            + list(stand_in_corpus.prose(0, TOKENIZER_PROSE)))


# ------------------------------------------------------------------------------------------- pretraining

def recipe(text_only: bool, seed: int, steps: int | None) -> dict:
    """Everything the stand-in's weights depend on; its hash is the cache key."""
    phases = {name: flags + (["--max-steps", str(steps)] if steps else []) for name, flags in STAND_IN_PHASES.items()}
    corpus_files = sorted(p for p in SAMPLE_RAW_DIR.rglob("*") if p.is_file())
    tokenizer_text = hashlib.sha256(b"".join(p.read_bytes() for p in corpus_files)).hexdigest()
    return {"text": TINY_TEXT, "vision": None if text_only else TINY_VISION, "init_std": STAND_IN_INIT_STD,
            "seed": seed, "corpus": STAND_IN_CORPUS, "generator_version": stand_in_corpus.GENERATOR_VERSION,
            "tokenizer": {"conversations": TOKENIZER_CONVERSATIONS, "prose": TOKENIZER_PROSE, "layout": TOKENIZER_LAYOUT,
                          "sample_corpus_sha256": tokenizer_text},
            "common": STAND_IN_COMMON, "phases": phases, "self_check": [SELF_CHECK_PROMPTS, SELF_CHECK_BUDGET]}


def recipe_hash(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode("utf-8")).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a stand-in folder but its stamp, by relative path."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != STAMP}


def cached(out: Path, r: dict) -> dict | None:
    """The stamp of a finished stand-in built from this recipe, with today's floor and intact files, or None."""
    path = out / STAMP
    if not path.is_file():
        return None
    stamp = json.loads(path.read_text())
    if stamp.get("recipe_sha256") != recipe_hash(r) or stamp.get("contract_floor") != CONTRACT_FLOOR:
        return None
    return stamp if stamp.get("files") in (None, file_hashes(out)) else None


def copy_shipped(out: Path, r: dict) -> dict | None:
    """The shipped stand-in copied into `out` when it was built from this recipe, else None."""
    stamp = cached(SHIPPED, r)
    if stamp is None or out.resolve() == SHIPPED.resolve():
        return None
    work = out.with_name(f".{out.name}.copying")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(SHIPPED, work)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return stamp


def write_corpus(folder: Path, model_dir: Path, seed: int) -> dict:
    """DAPT-style documents: rendered conversations (the chat template's tokens, without the <s> and final </s>
    the packer adds) and prose paragraphs; train and validation never share a first question."""
    from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
    from train.masking import read_template, render_with_spans

    template = read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)
    default_system = (model_dir / "SYSTEM_PROMPT.txt").read_text(encoding="utf-8")

    def render(conv: list[dict]) -> str:
        text, _ = render_with_spans(conv, template, default_system_message=default_system)
        return text.removeprefix("<s>").removesuffix("</s>")

    c = STAND_IN_CORPUS
    held = [conv[1]["content"] for conv in stand_in_corpus.held_out_prompts(SELF_CHECK_PROMPTS)]
    val_convs = list(stand_in_corpus.conversations(seed + 1_000_003, c["validation_conversations"], set(held)))
    exclude = set(held) | {conv[1]["content"] for conv in val_convs}
    splits = {"train": (stand_in_corpus.conversations(seed, c["conversations"], exclude),
                        stand_in_corpus.prose(seed, c["prose"])),
              "validation": (val_convs, stand_in_corpus.prose(seed + 1_000_003, c["validation_prose"]))}
    counts = {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, (convs, prose) in splits.items():
        docs = [render(conv) for conv in convs] + list(prose)
        # Interleave conversations and prose deterministically, so packed blocks mix both.
        docs.sort(key=lambda d: hashlib.sha256(d.encode("utf-8")).digest())
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"id": f"{split}-{i}", "source": "stand-in", "text": d}) + "\n")
        counts[split] = len(docs)
    return counts


def write_back(random_dir: Path, trained_dir: Path, out: Path) -> None:
    """The random checkpoint with its text weights replaced by the trained ones, saved in its own layout (bf16)."""
    import torch
    from safetensors.torch import load_file
    from transformers import Ministral3ForCausalLM, Mistral3ForConditionalGeneration

    from train.pretrained import read_text_config

    trained = load_file(str(trained_dir / "model.safetensors"))
    if read_text_config(random_dir)[1] == "ministral3":
        model = Ministral3ForCausalLM.from_pretrained(random_dir, dtype=torch.float32)
        model.load_state_dict(trained, strict=True)
    else:
        model = Mistral3ForConditionalGeneration.from_pretrained(random_dir, dtype=torch.float32)
        decoder = {k.removeprefix("model."): v for k, v in trained.items() if k.startswith("model.")}
        model.model.language_model.load_state_dict(decoder, strict=True)
        model.lm_head.load_state_dict({"weight": trained["lm_head.weight"]}, strict=True)
    model.to(torch.bfloat16).save_pretrained(out)
    for name in SIDE_FILES:
        if (random_dir / name).is_file():
            shutil.copy2(random_dir / name, out / name)


def self_check(model_dir: Path) -> dict:
    """Greedy generations on held-out generic prompts (their own system prompts), judged by the contract."""
    import torch

    from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
    from train.masking import read_template
    from train.pretrained import load_tokenizer
    from train.tools.generation import (contract_summary, generation_budget, generate_turns, judge_generation,
                                        load_for_inference, prompt_ids)

    device = torch.device("cpu")
    tokenizer = load_tokenizer(model_dir)
    template = read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)
    default_system = (model_dir / "SYSTEM_PROMPT.txt").read_text(encoding="utf-8")
    prompts = [prompt_ids(p, tokenizer, template, default_system)[1]
               for p in stand_in_corpus.held_out_prompts(SELF_CHECK_PROMPTS)]
    budget = min(SELF_CHECK_BUDGET, generation_budget(model_dir))
    model = load_for_inference(model_dir, None, device)
    generations = generate_turns(model, prompts, budget, 16, device)
    return contract_summary([judge_generation(g, tokenizer, budget) for g in generations], budget)


def pretrain(out: Path, text_only: bool, seed: int, steps: int | None, r: dict, log=print) -> dict:
    """Random checkpoint -> pretraining phases (train.main) -> trained checkpoint in `out`, with its stamp."""
    import torch

    from train.device import cpu_name, default_precision, resolve_device
    from train.main import main as train_main

    t0 = time.perf_counter()
    work = out.with_name(f".{out.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    random_dir = build(work / "random", text_only=text_only, seed=seed, initializer_range=STAND_IN_INIT_STD)
    counts = write_corpus(work / "corpus", random_dir, seed)
    log(f"[stand-in] generic corpus: {counts['train']} training and {counts['validation']} validation documents "
        f"(conversations in the reasoning contract and prose; nothing about the C64)")
    precision = default_precision(resolve_device("auto"))
    model_path, phase_logs = random_dir, {}
    for name, flags in r["phases"].items():
        run_dir = work / name
        argv = (STAND_IN_COMMON + flags + ["--model-path", str(model_path), "--dapt-dir", str(work / "corpus"),
                                           "--output-dir", str(run_dir), "--precision", precision,
                                           "--seed", str(seed), "--device", "cpu"])
        log(f"[stand-in] pretraining phase {name}: train.main {' '.join(argv)}")
        if train_main(argv) != 0:
            raise StandInError(f"stand-in pretraining phase {name} failed; its log: {run_dir / 'train.log'}")
        phase_logs[name] = json.loads((run_dir / "training_args.json").read_text())["result"]
        model_path = run_dir
    final = work / "model"
    write_back(random_dir, model_path, final)
    check = self_check(final)
    logs = final / "pretraining"
    logs.mkdir()
    for name in r["phases"]:
        for f in ("train.log", "metrics.jsonl", "training_args.json"):
            shutil.copy2(work / name / f, logs / f"{name}.{f}")
    stamp = {"stand_in": True, "recipe": r, "recipe_sha256": recipe_hash(r), "contract_floor": CONTRACT_FLOOR,
             "phases": phase_logs, "self_check": check, "precision": precision, "threads": torch.get_num_threads(),
             "cpu": cpu_name(), "build_seconds": round(time.perf_counter() - t0, 1)}
    (final / "README.md").write_text(
        "# STAND-IN MODEL (not Ministral 3)\n\n"
        "A tiny model with Ministral 3's architecture, file layout and control-token ids, built by\n"
        "`./run.sh tiny-model` so that the default flow runs on a CPU. It was pretrained by this toolkit on\n"
        "generated generic material (arithmetic, word and logic questions answered in the reasoning contract,\n"
        "and everyday prose); it knows nothing about the Commodore 64. See stand_in.json for its recipe and\n"
        f"its greedy contract pass rate on held-out generic prompts ({check['rate']:.1%}).\n")
    stamp["files"] = file_hashes(final)
    (final / STAMP).write_text(json.dumps(stamp, indent=1))
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    shutil.rmtree(work)
    return stamp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the checkpoint into")
    ap.add_argument("--text-only", action="store_true", help="Ministral3ForCausalLM instead of the full VLM layout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--untrained", action="store_true", help="random weights only: skip the pretraining")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override every pretraining phase's step count")
    ap.add_argument("--force", action="store_true", help="build even when the folder, or the shipped stand-in in "
                    f"{SHIPPED.relative_to(PROJECT_ROOT)}, holds this recipe's stand-in")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    if args.untrained:
        build(out, text_only=args.text_only, seed=args.seed)
        print(f"tiny {'text-only ' if args.text_only else ''}Ministral 3 checkpoint (random weights) written to {out} "
              f"in {time.perf_counter() - t0:.1f}s: {', '.join(sorted(p.name for p in out.iterdir()))}")
        return 0
    r = recipe(args.text_only, args.seed, args.pretrain_steps)
    stamp = None if args.force else cached(out, r)
    if stamp is not None:
        print(f"[stand-in] STAND-IN model in {out} is up to date (recipe {stamp['recipe_sha256'][:12]}, built in "
              f"{stamp['build_seconds']:.0f}s; held-out contract pass rate {stamp['self_check']['rate']:.1%}): reused")
        return 0
    stamp = None if args.force else copy_shipped(out, r)
    if stamp is not None:
        print(f"[stand-in] STAND-IN model copied to {out} from the shipped {SHIPPED.relative_to(PROJECT_ROOT)} (recipe "
              f"{stamp['recipe_sha256'][:12]}, built in {stamp['build_seconds']:.0f}s on {stamp.get('cpu', 'a CPU')}; "
              f"held-out contract pass rate {stamp['self_check']['rate']:.1%}; contract floor {CONTRACT_FLOOR})")
        return 0
    try:
        stamp = pretrain(out, args.text_only, args.seed, args.pretrain_steps, r)
    except UserError as e:
        print(f"[stand-in] error: {e}", file=sys.stderr)
        return 1
    check = stamp["self_check"]
    print(f"[stand-in] STAND-IN model written to {out} in {stamp['build_seconds']:.0f}s (recipe "
          f"{stamp['recipe_sha256'][:12]}); greedy contract pass rate on {check['total']} held-out generic prompts: "
          f"{check['rate']:.1%} ({check['broke_contract']} broke the contract, {check['cut_by_budget']} cut by the "
          f"budget of {check['max_new_tokens']} tokens)")
    if check["rate"] < 0.95:
        print(f"[stand-in] WARNING: below the 95% the stand-in is built for; the fine-tuning flow will start from a "
              f"base that does not reliably speak the contract. Failure codes: {check['failure_codes']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
