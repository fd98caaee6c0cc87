"""Build the bench fixture: the inputs that `./run.sh bench-trl` trains on, once with the loop and once with TRL's
SFTTrainer (docs/performance.md, "CPU: the loop against TRL's SFTTrainer").

    python -m train.tools.bench_fixture --out DIR [--size bench|small] [--seed 0]

Writes into DIR (which must not exist yet, or be empty):
  model/               a text-only Ministral3ForCausalLM with random weights (bf16 on disk, as released), the
                       stand-in's kind of tokenizer (control tokens at the real ids, train/tools/model_files.py),
                       SYSTEM_PROMPT.txt, generation_config.json, and as chat_template.jinja the project's
                       training template (templates/, with {% generation %} blocks), so TRL's assistant mask and
                       the loop's span masking read one and the same template
  chat_template.jinja  that template again, where `bench.py --fixture` reads it
  data/train.jsonl     {"id", "messages"} reasoning conversations (system prompt, then 1-4 turns whose assistant
                       content is [THINK]reasoning[/THINK]answer), from the stand-in's generic generator
  fixture.json         what was built: size, seed, shapes, token counts at the bench's max length, library
                       versions and the sha256 of every other file

--size bench is the cpu bench preset's model (model_files.BENCH_TEXT) with 256 conversations; --size small is a
toy of the same layout for tests. The same seed, size and library versions give the same files.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from train.checkpointing import sha256_file
from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
from train.tools import stand_in_corpus
from train.tools.model_files import BENCH_TEXT, build_tokenizer, sample_texts, text_config, write_side_files

SMALL_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=4096)
# 256 conversations are 8 optimizer steps of 2 x 16 rows, the cpu preset's default step count: one epoch.
SIZES = {"bench": dict(text=BENCH_TEXT, conversations=256), "small": dict(text=SMALL_TEXT, conversations=64)}
MAX_LENGTH = 512  # the cpu bench preset's; only for the token counts in fixture.json
# The conversations come from a seed space of their own, so none is a conversation the stand-in was pretrained on.
SEED_OFFSET = 7_000_001


def conversations(seed: int, n: int) -> list[dict]:
    return [{"id": f"bench-{i}", "messages": messages}
            for i, messages in enumerate(stand_in_corpus.conversations(SEED_OFFSET + seed, n))]


def token_counts(model_dir: Path, rows: list[dict], template: str) -> dict:
    """Tokens and supervised tokens of the rows at the bench's max length, as the loop's masking labels them."""
    from transformers import PreTrainedTokenizerFast

    from train.masking import encode_dataset
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    encoded, summary = encode_dataset(rows, tokenizer, template, max_length=MAX_LENGTH, strict=False, progress=False)
    lengths = [len(e.input_ids) for e in encoded]
    return {"max_length": MAX_LENGTH, "rows": len(encoded), "tokens": summary["total_tokens"],
            "supervised_tokens": summary["supervised_tokens"], "longest": max(lengths), "shortest": min(lengths),
            "tokenizer_entries": len(tokenizer), "warnings": dict(summary["warnings"])}


def build(out: str | Path, size: str = "bench", seed: int = 0) -> dict:
    """Write the fixture into `out` (built in a sibling folder and renamed, so a half-built one never looks
    finished); returns the manifest also written as fixture.json."""
    import torch
    import transformers
    from transformers import Ministral3ForCausalLM

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder; delete it to build the fixture "
                              "again")
    t0 = time.perf_counter()
    spec = SIZES[size]
    work = out.with_name(f".{out.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    model_dir = work / "model"
    model_dir.mkdir(parents=True)
    rows = conversations(seed, spec["conversations"])
    # The tokenizer learns from the shipped sample corpus and the fixture's own conversations.
    tokenizer = build_tokenizer(sample_texts() + [m["content"] for r in rows for m in r["messages"]],
                                spec["text"]["vocab_size"])
    cfg = text_config(spec["text"])
    cfg.architectures = ["Ministral3ForCausalLM"]
    torch.manual_seed(seed)
    model = Ministral3ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    write_side_files(model_dir, tokenizer)
    template = (PROJECT_ROOT / DEFAULT_TEMPLATE_PATH).read_text(encoding="utf-8")
    # Replaces the official-style template write_side_files put there: trainers that read the model folder's
    # template (TRL does) must find the generation blocks.
    (model_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    (work / "chat_template.jinja").write_text(template, encoding="utf-8")
    (work / "data").mkdir()
    with (work / "data" / "train.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    files = {str(p.relative_to(work)): sha256_file(p) for p in sorted(work.rglob("*")) if p.is_file()}
    manifest = {"size": size, "seed": seed, "conversations": len(rows), "text_config": spec["text"],
                "parameters": sum(p.numel() for p in model.parameters()),
                "tokens": token_counts(model_dir, rows, template),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                "files_sha256": files, "build_seconds": round(time.perf_counter() - t0, 1)}
    (work / "fixture.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if out.exists():
        out.rmdir()
    work.rename(out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.bench_fixture", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder to write the fixture into (new or empty)")
    ap.add_argument("--size", choices=sorted(SIZES), default="bench",
                    help="bench: the cpu bench preset's model and 256 conversations; small: a toy for tests")
    ap.add_argument("--seed", type=int, default=0, help="seeds the weights and the conversations")
    a = ap.parse_args(argv)
    try:
        m = build(a.out, a.size, a.seed)
    except FileExistsError as e:
        print(f"bench_fixture: {e}", file=sys.stderr)
        return 2
    t = m["tokens"]
    print(f"bench fixture ({a.size}, seed {a.seed}) written to {a.out} in {m['build_seconds']:.0f}s: "
          f"{m['parameters'] / 1e6:.1f}M parameters, {m['conversations']} conversations, {t['tokens']} tokens of "
          f"which {t['supervised_tokens']} supervised at max length {t['max_length']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
