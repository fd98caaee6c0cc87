"""Build the tiny local Ministral 3 checkpoint: the stand-in model of the default run (docs/model.md).

Same classes, config layout, on-disk key names, control-token ids and file set as the released
Ministral-3-8B Reasoning checkpoint, scaled down so the whole default flow runs on 2 CPU cores.
Deterministic: the same seed and the same sample corpus give byte-identical files.

    python -m train.tools.tiny_model --out models/tiny-ministral3 [--text-only] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B
from train.tools.model_files import SAMPLE_RAW_DIR, build_tokenizer, sample_texts, write_side_files

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

def build(out: str | os.PathLike, text_only: bool = False, seed: int = 0, raw_dir: Path = SAMPLE_RAW_DIR,
          text_size: dict | None = None, initializer_range: float = TINY_INIT_STD) -> Path:
    import torch
    from transformers import (Ministral3Config, Ministral3ForCausalLM, Mistral3Config,
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

    write_side_files(out, tok)
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
