"""The tiny preset: train.main's flags for the stand-in's DAPT and SFT, shared by the flow and the floor's
calibration (docs/recipe.md, "The tiny preset")."""
from __future__ import annotations

from pathlib import Path

# The tiny preset: the recipe's structure (LoRA, assistant-only strict loss, packing on/off) with sizes and
# step counts for the 4.5M-parameter stand-in on a 2-core CPU (docs/recipe.md, "The tiny preset"). LoRA r64
# (a quarter of the hidden size). DAPT is gentle because the stand-in already answers in the contract and
# earlier stand-ins forgot it under stronger DAPT on raw C64 text (the shipped one does not: docs/recipe.md). SFT runs at 100x the 8B recipe's rate in many small
# steps: a model this small keeps the contract on C64 questions only once it fits the C64 answers well, and
# for the same rows seen, more and smaller steps fit better; longer SFT fits better still but does not keep the
# contract better. Its batches mix question kinds, because length-grouped batches hold one kind each and then
# the last few kinds seen decide how the model ends.
# SDPA: on this preset's shapes it is faster than eager on CPU; compiling pays off on DAPT's fixed shapes.
TINY_COMMON = ["--grad-accum", "1", "--lora-r", "64", "--lora-alpha", "64", "--lora-dropout", "0.0",
               "--warmup-ratio", "0.05", "--log-interval", "5", "--attention", "sdpa"]
TINY_DAPT = ["--max-length", "512", "--micro-batch-size", "8", "--lr", "3e-5", "--max-steps", "40",
             "--eval-max-batches", "8", "--eval-interval", "1000", "--save-interval", "1000", "--compile"]
TINY_SFT = ["--max-length", "1024", "--micro-batch-size", "4", "--lr", "2e-3", "--max-steps", "600",
            "--no-group-by-length", "--eval-max-batches", "64", "--eval-interval", "1000", "--save-interval", "1000"]
# Documents are scored in blocks as long as the stand-in was trained on (its pretraining and TINY_DAPT); a
# tiny model's decoding step costs the same for 1 row as for 64, so all questions go in few batches. A batch
# decodes until its longest answer ends, and the stand-in's answers end well within 256 tokens unless they loop:
# a loop is cut there (and counted as cut) instead of setting the pace of the first run.
TINY_EVAL = ["--max-length", "512", "--per-kind", "4", "--batch-size", "64"]
TINY_EVAL_BUDGET = 256   # the evaluations' max_new_tokens, or the stand-in's own budget where that is smaller


def phase_argv(phase: str, model: Path, data_dir: Path, out: Path, tiny: bool, precision: str,
               seed: int | None = None, steps: int | None = None, base_adapter: Path | None = None) -> list[str]:
    """train.main's flags for one training phase of the flow: the recipe's defaults, or the tiny preset."""
    preset = TINY_COMMON + (TINY_DAPT if phase == "dapt" else TINY_SFT) if tiny else []
    return (["--phase", phase, f"--{phase}-dir", str(Path(data_dir) / phase), "--output-dir", str(out),
             "--model-path", str(model), "--precision", precision]
            + (["--base-adapter", str(base_adapter)] if base_adapter else []) + preset
            + (["--seed", str(seed)] if seed is not None else []) + (["--max-steps", str(steps)] if steps else []))
