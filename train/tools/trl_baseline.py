"""The TRL SFTTrainer side of the cpu bench: trains the bench fixture with the same settings as
`train.tools.bench --preset cpu` and prints its figures as one JSON line, which bench.py reads.

    .venv-trl/bin/python train/tools/trl_baseline.py --fixture DIR [--max-steps 8] [--precision fp32|bf16]

Only the TRL venv's python runs this file (`./run.sh bench-trl` builds that venv from requirements-trl.txt and
passes this file to bench.py as --trl-script); the project never imports it and does not depend on TRL, so it
imports nothing from the project either. The fixture comes from train/tools/bench_fixture.py.

Settings, as the bench's cpu preset: LoRA r16, alpha 32, dropout 0.05 on q,k,v,o,gate,up,down; micro-batch 2,
gradient accumulation 16; AdamW at a constant lr 2e-5 with torch's default weight decay (0.01) and the
gradient norm clipped to 1.0; max length 512; assistant-only loss from the template's generation blocks;
packing and padding-free off; no gradient checkpointing (TRL's own default turns it on; the bench's memory plan
leaves it off at these shapes); bf16 autocast or fp32 as --precision says. Everything else is TRL's default
(its sampler, its attention kernel).

Figures printed: tokens_per_s (non-pad tokens fed to the model / wall time of trainer.train()),
assistant_tokens_per_s (tokens with a training target, i.e. an assistant-mask label at a position that is
predicted), tokens, assistant_tokens, padded_tokens, train_wall_s, peak_rss_MiB (the process's ru_maxrss,
model load included), losses (one per optimizer step), versions and settings.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read_conversations(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"trl_baseline: {path}: not found (build the fixture with "
                         "python -m train.tools.bench_fixture --out DIR)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append({"messages": json.loads(line)["messages"]})
                except (json.JSONDecodeError, KeyError) as e:
                    raise SystemExit(f"trl_baseline: {path}:{n}: not a {{\"messages\": [...]}} row ({e})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, required=True, help="the bench fixture folder (model/, data/train.jsonl)")
    ap.add_argument("--max-steps", type=int, default=8, help="optimizer steps")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--output-dir", type=Path, default=None,
                    help="the trainer's output folder (nothing is saved in it; default: FIXTURE/../trl_baseline_out)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir = a.fixture / "model"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"trl_baseline: {model_dir / 'config.json'}: not found (not a bench fixture?)")
    dataset = Dataset.from_list(read_conversations(a.fixture / "data" / "train.jsonl"))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Weights in fp32 as the loop's are under fp32; under bf16 TRL autocasts, as its CPU recipe does.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

    args = SFTConfig(
        output_dir=str(a.output_dir or a.fixture.parent / "trl_baseline_out"), max_steps=a.max_steps,
        per_device_train_batch_size=2, gradient_accumulation_steps=16, learning_rate=2e-5,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, optim="adamw_torch",
        bf16=a.precision == "bf16", fp16=False, gradient_checkpointing=False,
        max_length=512, assistant_only_loss=True, packing=False, padding_free=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        seed=a.seed, data_seed=a.seed, dataloader_num_workers=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, bias="none",
                      task_type="CAUSAL_LM")

    seen = {"tokens": 0, "assistant_tokens": 0, "padded_tokens": 0, "micro_batches": 0}

    class Counted(SFTTrainer):
        """Counts what each micro-batch feeds the model, before the step runs."""

        def training_step(self, model, inputs, *rest, **kw):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            seen["tokens"] += int(mask.sum()) if mask is not None else int((ids != tokenizer.pad_token_id).sum())
            seen["padded_tokens"] += ids.numel()
            # The labels are not shifted yet: position 0 is never a target, whatever its label says.
            seen["assistant_tokens"] += int((inputs["labels"][:, 1:] != -100).sum())
            seen["micro_batches"] += 1
            return super().training_step(model, inputs, *rest, **kw)

    trainer = Counted(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start

    import peft
    import transformers
    import trl
    print(json.dumps({
        "trainer": "trl.SFTTrainer", "precision": a.precision, "threads": torch.get_num_threads(),
        "optimizer_steps": trainer.state.global_step, "micro_batches": seen["micro_batches"],
        "micro_batch": 2, "accum": 16, "max_length": 512, "trainable_params": trainable,
        "tokens": seen["tokens"], "assistant_tokens": seen["assistant_tokens"], "padded_tokens": seen["padded_tokens"],
        "train_wall_s": round(wall, 2),
        "tokens_per_s": round(seen["tokens"] / wall, 1),
        "assistant_tokens_per_s": round(seen["assistant_tokens"] / wall, 1),
        "s_per_optimizer_step": round(wall / max(1, trainer.state.global_step), 3),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "losses": [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
