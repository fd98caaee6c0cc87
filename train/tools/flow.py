"""The whole product in one command: model -> data -> DAPT -> SFT (on top of DAPT) -> post-training checks.

    ./run.sh            (python -m train.tools.flow)

With the real checkpoint in models/Ministral-3-8B-Thinking the phases run with the recipe defaults.
Without it, the tiny local model is built and the phases run with the tiny preset below: a few minutes
on 2 CPU cores, enough for the random-weight model to learn the [THINK]...[/THINK]answer</s> format.
Stops at the first failing stage with its exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from train.config import DEFAULT_MODEL_PATH
from train.device import default_precision, resolve_device

TINY_MODEL = Path("models/tiny-ministral3")

# The tiny preset: the recipe's structure (LoRA, assistant-only strict loss, packing on/off) with sizes
# and step counts for a 5M-parameter random-weight model on a 2-core CPU, sized so the whole flow takes
# under 10 minutes. LoRA r64 (a quarter of the hidden size) and a 150x higher lr than the 8B recipe: a
# random model has everything to learn and 900 steps to do it in (docs/recipe.md, "The tiny preset").
TINY_COMMON = ["--max-length", "1024", "--micro-batch-size", "16", "--grad-accum", "1", "--lora-r", "64",
               "--lora-alpha", "64", "--lora-dropout", "0.0", "--warmup-ratio", "0.05", "--eval-max-batches", "8",
               "--log-interval", "5"]
TINY_DAPT = ["--max-length", "256", "--lr", "3e-3", "--max-steps", "20", "--eval-interval", "1000",
             "--save-interval", "1000"]
TINY_SFT = ["--lr", "3e-3", "--max-steps", "900", "--eval-interval", "1000", "--save-interval", "300"]


def banner(text: str) -> None:
    line = "=" * 100
    print(f"\n{line}\n{text}\n{line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=DEFAULT_MODEL_PATH)
    ap.add_argument("--raw-dir", default="data/raw")
    ap.add_argument("--data-dir", default="data/processed")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--sft-max", type=int, default=None, help="cap on generated SFT conversations")
    ap.add_argument("--check-limit", type=int, default=64, help="validation prompts generated in the checks")
    ap.add_argument("--check-threshold", type=float, default=0.9, help="minimum reasoning-contract pass rate")
    ap.add_argument("--dapt-steps", type=int, default=None, help="override the preset's DAPT --max-steps")
    ap.add_argument("--sft-steps", type=int, default=None, help="override the preset's SFT --max-steps")
    ap.add_argument("--seed", type=int, default=None, help="--seed for DAPT and SFT (default: train.main's --seed)")
    a = ap.parse_args(argv)

    from data.build import main as data_main
    from train.main import main as train_main
    from train.tools.post_checks import main as check_main
    from train.tools.tiny_model import main as tiny_main

    t0 = time.perf_counter()
    times: dict[str, float] = {}
    model = Path(a.model_path)
    tiny = not (model / "config.json").is_file()
    if tiny:
        model = Path(a.models_dir) / TINY_MODEL.name
        banner(f"NO MODEL FOUND at {a.model_path}: building the TINY LOCAL MODEL in {model} (random weights).\n"
               f"This run demonstrates the whole flow on CPU; it does not make a useful C64 assistant.\n"
               f"Put the downloaded Ministral-3-8B Reasoning checkpoint in {DEFAULT_MODEL_PATH} for the real run.")
        if tiny_main(["--out", str(model)]) != 0:
            banner("[flow] building the tiny local model FAILED; the messages above say why.")
            return 1
    times["model"] = time.perf_counter() - t0

    precision = default_precision(resolve_device("auto"))
    if precision == "fp32":
        print("[flow] this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32, which is faster here")
    dapt_out, sft_out = Path(a.models_dir) / "fine-tuned-dapt", Path(a.models_dir) / "fine-tuned-sft"
    dapt_dir, sft_dir = Path(a.data_dir) / "dapt", Path(a.data_dir) / "sft"
    common = (["--model-path", str(model), "--precision", precision] + (TINY_COMMON if tiny else [])
              + (["--seed", str(a.seed)] if a.seed is not None else []))

    stages = [
        ("data", data_main, ["--raw-dir", a.raw_dir, "--out-dir", a.data_dir, "--model-path", str(model)]
         + (["--sft-max", str(a.sft_max)] if a.sft_max else [])),
        ("dapt", train_main, ["--phase", "dapt", "--dapt-dir", str(dapt_dir), "--output-dir", str(dapt_out)]
         + common + (TINY_DAPT if tiny else []) + (["--max-steps", str(a.dapt_steps)] if a.dapt_steps else [])),
        ("sft", train_main, ["--phase", "sft", "--sft-dir", str(sft_dir), "--output-dir", str(sft_out),
                             "--base-adapter", str(dapt_out)]
         + common + (TINY_SFT if tiny else []) + (["--max-steps", str(a.sft_steps)] if a.sft_steps else [])),
        ("check", check_main, ["--run-dir", str(sft_out), "--limit", str(a.check_limit),
                               "--threshold", str(a.check_threshold)]),
    ]
    for name, fn, args in stages:
        banner(f"[flow] stage {name}: {' '.join(args)}")
        t = time.perf_counter()
        rc = fn(args)
        times[name] = time.perf_counter() - t
        if rc != 0:
            banner(f"[flow] stage {name} FAILED (exit {rc}) after {time.perf_counter() - t0:.0f}s; "
                   "the messages above say why. Later stages were not run.")
            return rc

    report = json.loads((sft_out / "post_training_report.json").read_text())
    total = time.perf_counter() - t0
    banner(f"[flow] DONE in {total / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})\n"
           f"[flow] reasoning-contract pass rate on greedy validation generations: {report['contract_pass_rate']:.1%}\n"
           f"[flow] adapter: {sft_out} (SFT on top of {dapt_out}); report: {sft_out / 'post_training_report.json'}")
    (sft_out / "flow_summary.json").write_text(json.dumps({"model": str(model), "tiny": tiny, "precision": precision,
                                                           "stage_seconds": times, "total_seconds": total,
                                                           "contract_pass_rate": report["contract_pass_rate"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
