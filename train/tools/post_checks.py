"""Post-training checks: is this run's output fit to use? Writes post_training_report.json and exits
non-zero when any check fails.

    python -m train.tools.post_checks --run-dir models/fine-tuned-sft [--limit 64] [--threshold T] [--seed 0]

Checks: artifacts present and loadable; training_args says assistant-only (and strict) loss was on (SFT);
metrics finite and the run finished; validation loss after < before; the training template has
generation blocks; the prompt contract holds in rendered prompts; generations on validation prompts, decoded
as the model is served (the sampling of generation.sampling_settings, seeded), pass the reasoning contract at
or above the base model's bar: 0.95 for a real checkpoint, the calibrated floor that a stand-in declares in
its stand_in.json (docs/recipe.md, "Calibrating the contract floor"), or --threshold. Greedy generations are
reported beside them as a second figure. A generation the token budget cut before it finished is reported
apart from one that broke the contract (both count as not passing).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from contract.errors import UserError
from train.batching import read_jsonl
from train.device import resolve_device
from train.tools.generation import (contract_summary, generation_budget, generate_turns, judge_generation,
                                    load_for_inference, prompt_ids, sampling_settings, spread_sample)

# What a real checkpoint's generations must reach; a stand-in declares its own, lower floor (contract_floor()).
REAL_CHECKPOINT_BAR = 0.95
CONTRACT_CHECK = "generations_pass_reasoning_contract"
REQUIRED = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_args.json",
            "metrics.jsonl", "train.log", "chat_template.jinja")


def contract_floor(model_path: str | Path, threshold: float | None = None) -> dict:
    """The pass rate the contract check requires of generations from this base model, and where it comes from:
    --threshold when given, else the floor in a stand-in's stand_in.json, else REAL_CHECKPOINT_BAR."""
    if threshold is not None:
        return {"value": threshold, "source": "--threshold"}
    stamp = Path(model_path) / "stand_in.json"
    if stamp.is_file():
        floor = json.loads(stamp.read_text()).get("contract_floor")
        if floor is None:
            raise UserError(f"{stamp}: no contract_floor field; rebuild the stand-in (./run.sh tiny-model --force)")
        return {"value": float(floor), "source": f"the stand-in's floor ({stamp})"}
    return {"value": REAL_CHECKPOINT_BAR, "source": "the bar for a real checkpoint"}


def floor_line(summary: dict, floor: dict) -> str:
    """One line that names the rate, the floor, its source and the real model's bar."""
    verdict = ">=" if summary["rate"] >= floor["value"] else "<"
    line = (f"contract {summary['rate']:.1%} ({summary['passed']}/{summary['total']}) {verdict} "
            f"{floor['value']:.2f}, {floor['source']}")
    if floor["source"] != "the bar for a real checkpoint":
        line += f"; a real checkpoint is held to {REAL_CHECKPOINT_BAR:.2f}"
    return line


def run_checks(run_dir: Path, limit: int, threshold: float | None, max_new_tokens: int | None,
               device: torch.device, sft_dir: str | None = None, seed: int = 0) -> dict:
    from contract.prompt import check_rendered_prompt, read_model_system_prompt, system_prompt_for
    from train.masking import has_generation_blocks
    from train.pretrained import load_tokenizer

    checks: list[dict] = []

    def check(name: str, passed: bool, detail) -> bool:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})
        return passed

    missing = [f for f in REQUIRED if not (run_dir / f).is_file()]
    check("artifacts_present", not missing, {"missing": missing})
    if missing:
        return {"run_dir": str(run_dir), "passed": False, "checks": checks}
    args = json.loads((run_dir / "training_args.json").read_text())
    phase = args["phase"]
    if phase == "sft":
        check("assistant_only_loss_on", args.get("assistant_only_loss") is True and
              args.get("strict_assistant_only_loss") is True,
              {"assistant_only_loss": args.get("assistant_only_loss"),
               "strict_assistant_only_loss": args.get("strict_assistant_only_loss")})
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    bad = [r["step"] for r in train if not all(math.isfinite(r[k]) for k in ("loss", "grad_norm"))
           and r["skipped_steps"] == 0]
    result = args.get("result") or {}
    check("run_finished_with_finite_metrics", args.get("finished") is True and train and not bad,
          {"finished": args.get("finished"), "train_records": len(train), "non_finite_steps": bad,
           "skipped_steps": result.get("skipped_steps")})
    before, after = result.get("eval_loss_before"), result.get("eval_loss_after")
    check("validation_loss_improved", before is not None and after is not None and after < before,
          {"before": before, "after": after})
    template = (run_dir / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = load_tokenizer(run_dir)
    if phase == "sft":
        from train.template_parity import first_difference
        check("template_has_generation_blocks", has_generation_blocks(template), {"template": "chat_template.jinja"})
        drift = first_difference(args["model_path"], run_dir / "chat_template.jinja", tokenizer)
        check("template_matches_model_folder", drift is None, {"first_difference": drift})

    dtype = torch.bfloat16 if args["precision"] == "bf16" and device.type == "cuda" else torch.float32
    adapter = {"adapter": str(run_dir / "adapter_model.safetensors")}
    try:
        device_model = load_for_inference(args["model_path"], run_dir, device, dtype)
    except Exception as e:  # a failed load is this check's finding, not a traceback
        check("adapter_loads_with_peft", False, adapter | {"error": f"{type(e).__name__}: {e}"[:2000]})
        return {"run_dir": str(run_dir), "phase": phase, "checks": checks, "passed": False}
    check("adapter_loads_with_peft", True, adapter)
    report = {"run_dir": str(run_dir), "phase": phase, "checks": checks}
    if phase != "sft":
        report["passed"] = all(c["passed"] for c in checks)
        return report

    # Prompts: validation conversations up to their first assistant turn, rendered with the run's template.
    rows = spread_sample(read_jsonl(Path(sft_dir or args["sft_dir"]) / "validation.jsonl"), limit)
    expected_system = system_prompt_for(args["model_path"])
    default_system = read_model_system_prompt(args["model_path"])
    prompts, prompt_failures = [], []
    for r in rows:
        text, ids = prompt_ids(r["messages"], tokenizer, template, default_system)
        if codes := check_rendered_prompt(text, expected_system):
            prompt_failures.append({"id": r["id"], "codes": codes})
        prompts.append(ids)
    check("prompt_contract_in_rendered_prompts", rows and not prompt_failures,
          {"prompts": len(rows), "failures": prompt_failures[:10]})

    budget = max_new_tokens or generation_budget(args["model_path"])
    sampling = sampling_settings(args["model_path"])
    floor = contract_floor(args["model_path"], threshold)
    figures = {}
    for decoding, settings in (("sampled", sampling), ("greedy", None)):
        t0 = time.perf_counter()
        generations = generate_turns(device_model, prompts, budget, 16, device, sampling=settings, seed=seed)
        judged = [judge_generation(g, tokenizer, budget) for g in generations]
        # Failures first: they are what the report is read for.
        order = sorted(range(len(judged)), key=lambda i: judged[i].status == "passed")
        samples = [{"id": rows[i]["id"], "status": judged[i].status, "codes": list(judged[i].codes),
                    "generation": tokenizer.decode(generations[i], skip_special_tokens=False)[:600]}
                   for i in order[:5]]
        figures[decoding] = contract_summary(judged, budget) | {
            "generation_s": round(time.perf_counter() - t0, 1), "samples": samples}
    decoding = {"sampling": {k: v for k, v in sampling.items() if k != "do_sample"}, "seed": seed}
    check(CONTRACT_CHECK, figures["sampled"]["rate"] >= floor["value"],
          figures["sampled"] | {"decoding": decoding, "floor": floor, "real_checkpoint_bar": REAL_CHECKPOINT_BAR,
                                "greedy": figures["greedy"]})
    report["contract_pass_rate"] = figures["sampled"]["rate"]
    report["greedy_contract_pass_rate"] = figures["greedy"]["rate"]
    report["contract_floor"] = floor | {"line": floor_line(figures["sampled"], floor)}
    report["passed"] = all(c["passed"] for c in checks)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.post_checks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="output folder of a training run")
    ap.add_argument("--sft-dir", default=None, help="SFT data folder (default: the one the run trained on)")
    ap.add_argument("--limit", type=int, default=64, help="validation prompts to generate for, spread evenly over the split")
    ap.add_argument("--threshold", type=float, default=None,
                    help="minimum share of contract-valid sampled generations (default: the base model's bar: "
                         f"{REAL_CHECKPOINT_BAR} for a real checkpoint, a stand-in's calibrated floor)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed repeats the same generations")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation budget (default: the base model's generation_config.json max_new_tokens, else "
                         "16384: real reasoning traces are long)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    run_dir = Path(a.run_dir)
    if not run_dir.is_dir():
        print(f"check: {run_dir}: no such run folder", file=sys.stderr)
        return 2
    try:
        report = run_checks(run_dir, a.limit, a.threshold, a.max_new_tokens, device, a.sft_dir, a.seed)
    except UserError as e:
        print(f"check: {e}", file=sys.stderr)
        return 2
    (run_dir / "post_training_report.json").write_text(json.dumps(report, indent=1))
    for c in report["checks"]:
        print(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['name']}")
    if "contract_pass_rate" in report:
        d = next(c for c in report["checks"] if c["name"] == CONTRACT_CHECK)["detail"]
        g = d["greedy"]
        print(f"  {report['contract_floor']['line']}")
        print(f"  sampled (temperature {d['decoding']['sampling'].get('temperature')}, top-p "
              f"{d['decoding']['sampling'].get('top_p')}, seed {d['decoding']['seed']}): {d['broke_contract']} broke "
              f"the contract {d['failure_codes'] or ''}, {d['cut_by_budget']} cut by the budget of "
              f"{d['max_new_tokens']} tokens; greedy, for comparison: {g['rate']:.1%} ({g['passed']}/{g['total']}), "
              f"{g['broke_contract']} broke {g['failure_codes'] or ''}, {g['cut_by_budget']} cut")
    print(f"post-training checks {'PASSED' if report['passed'] else 'FAILED'}: {run_dir / 'post_training_report.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
