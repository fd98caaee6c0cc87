"""The whole product in one command: model -> data -> DAPT -> SFT (on top of DAPT) -> post-training checks ->
the C64 evaluation of the base, the DAPT and the SFT model, side by side.

    ./run.sh            (python -m train.tools.flow)

With the real checkpoint in models/Ministral-3-8B-Thinking the phases run with the recipe defaults.
Without it, the STAND-IN model is used (built once by `./run.sh tiny-model` and cached in models/: a tiny
Ministral 3 pretrained by this toolkit to answer in the reasoning contract, knowing no C64), and the phases
run with the tiny preset below: minutes on 2 CPU cores. Stops at the first failing stage with its exit code,
except failed post-training checks: the evaluations still run, then the flow exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from train.config import DEFAULT_MODEL_PATH
from train.device import default_precision, resolve_device
from train.tools.generation import generation_budget
from train.tools.tiny_preset import TINY_EVAL, TINY_EVAL_BUDGET, phase_argv

TINY_MODEL = Path("models/tiny-ministral3")

# What flow_summary.json keeps of each evaluation: the figures, not the answers.
EVAL_SUMMARY_FIELDS = ("decoding", "held_out_facts", "trained_facts", "contract", "think_tokens", "cut_share", "greedy",
                       "document_loss")


def banner(text: str) -> None:
    line = "=" * 100
    print(f"\n{line}\n{text}\n{line}", flush=True)


def comparison(reports: dict[str, dict]) -> str:
    """The base / DAPT / SFT evaluations side by side: sampled figures first, each with its greedy figure
    under it, then the think length, the budget cuts and the held-out document loss."""
    def acc(part):
        return "-" if part is None else f"{part['correct']}/{part['total']} ({part['accuracy']:.0%})"

    def contract(c):
        return f"{c['passed']}/{c['total']} ({c['rate']:.0%})"

    def greedy(fn):
        return lambda r: "-" if not r.get("greedy") else fn(r["greedy"])

    def think(t):
        return "-" if not t["measured"] else f"{t['median']} / {t['p95']}"

    def cut(r):
        return f"{r['contract']['cut_by_budget']}/{r['contract']['total']} ({r['cut_share']:.0%})"

    base_doc = reports["base"]["document_loss"]
    base_loss = (base_doc or {}).get("loss")
    base_per_doc = {d["id"]: d["loss"] for d in (base_doc or {}).get("per_document", [])}

    def loss(r):
        return "-" if r["document_loss"] is None else f"{r['document_loss']['loss']:.3f}"

    def change(r):
        return ("-" if not base_loss or r["document_loss"] is None else
                f"{(r['document_loss']['loss'] - base_loss) / base_loss:+.0%}")

    def lower(r):
        if r is reports["base"]:
            return "-"
        docs = [d for d in (r["document_loss"] or {}).get("per_document", []) if d["id"] in base_per_doc]
        return "-" if not docs else f"{sum(d['loss'] < base_per_doc[d['id']] for d in docs)}/{len(docs)}"

    n_docs = (base_doc or {}).get("documents", 0)
    rows = [("held-out C64 facts, sampled", lambda r: acc(r["held_out_facts"])),
            ("  greedy", greedy(lambda g: acc(g["held_out_facts"]))),
            ("trained C64 facts, sampled", lambda r: acc(r["trained_facts"])),
            ("  greedy", greedy(lambda g: acc(g["trained_facts"]))),
            ("reasoning contract, sampled", lambda r: contract(r["contract"])),
            ("  greedy", greedy(lambda g: contract(g["contract"]))),
            ("cut by the token budget, sampled", cut),
            ("  greedy", greedy(cut)),
            ("think tokens, median / p95, sampled", lambda r: think(r["think_tokens"])),
            ("  greedy", greedy(lambda g: think(g["think_tokens"]))),
            (f"held-out C64 document loss ({n_docs} docs)", loss),
            ("  change against the base", change),
            ("  documents below the base's loss", lower)]
    names = list(reports)
    lines = [f"{'':40s}" + "".join(f"{n:>16s}" for n in names)]
    lines += [f"{label:40s}" + "".join(f"{fn(reports[n]):>16s}" for n in names) for label, fn in rows]
    decoding = reports["base"].get("decoding", {}).get("sampled", {})
    lines.append("sampled: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in decoding.items())
                 + "; greedy: the same questions, answered greedily")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=DEFAULT_MODEL_PATH)
    ap.add_argument("--raw-dir", default="data/raw")
    ap.add_argument("--data-dir", default="data/processed")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--sft-max", type=int, default=None, help="cap on generated SFT conversations")
    ap.add_argument("--check-limit", type=int, default=64, help="validation prompts generated in the checks")
    ap.add_argument("--check-threshold", type=float, default=None,
                    help="minimum reasoning-contract pass rate (default: the base model's bar: 0.95 for a real "
                         "checkpoint, the stand-in's calibrated floor from its stand_in.json)")
    ap.add_argument("--check-seed", type=int, default=0, help="sampling seed of the post-training checks")
    ap.add_argument("--dapt-steps", type=int, default=None, help="override the preset's DAPT --max-steps")
    ap.add_argument("--sft-steps", type=int, default=None, help="override the preset's SFT --max-steps")
    ap.add_argument("--seed", type=int, default=None, help="--seed for DAPT, SFT and the evaluations' sampling "
                                                           "(default: each one's own --seed default)")
    ap.add_argument("--stand-in-steps", type=int, default=None,
                    help="override the stand-in's pretraining steps (tests; a different recipe, cached apart)")
    ap.add_argument("--eval-per-kind", type=int, default=None, help="questions per kind in each evaluation")
    a = ap.parse_args(argv)

    from data.build import main as data_main
    from train.main import main as train_main
    from train.report import write_report
    from train.tools.evaluate import main as eval_main
    from train.tools.post_checks import main as check_main
    from train.tools.tiny_model import main as tiny_main

    t0 = time.perf_counter()
    times: dict[str, float] = {}
    model = Path(a.model_path)
    tiny = not (model / "config.json").is_file()
    if tiny:
        model = Path(a.models_dir) / TINY_MODEL.name
        banner(f"NO MODEL FOUND at {a.model_path}: using the STAND-IN model in {model} (copied from the shipped\n"
               f"data/stand-in on first use). A tiny Ministral 3 pretrained by this toolkit on generic material: it\n"
               f"answers in the reasoning contract and knows no C64. This run demonstrates the whole flow on CPU; it does not make a useful C64 assistant.\n"
               f"Put the downloaded Ministral-3-8B Reasoning checkpoint in {DEFAULT_MODEL_PATH} for the real run.")
        if tiny_main(["--out", str(model)] + (["--pretrain-steps", str(a.stand_in_steps)] if a.stand_in_steps else [])) != 0:
            banner("[flow] building the stand-in model FAILED; the messages above say why.")
            return 1
    times["stand-in" if tiny else "model"] = time.perf_counter() - t0

    precision = default_precision(resolve_device("auto"))
    if precision == "fp32":
        print("[flow] this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32, which is faster here")
    models_dir = Path(a.models_dir)
    dapt_out, sft_out = models_dir / "fine-tuned-dapt", models_dir / "fine-tuned-sft"
    dapt_dir, sft_dir = Path(a.data_dir) / "dapt", Path(a.data_dir) / "sft"
    evals = {"base": (None, models_dir / "eval_report_base.json"), "DAPT": (dapt_out, dapt_out / "eval_report.json"),
             "SFT": (sft_out, sft_out / "eval_report.json")}
    eval_common = (["--model-path", str(model), "--sft-dir", str(sft_dir), "--dapt-dir", str(dapt_dir)]
                   + (TINY_EVAL + ["--max-new-tokens", str(min(TINY_EVAL_BUDGET, generation_budget(model)))]
                      if tiny else []) + (["--per-kind", str(a.eval_per_kind)] if a.eval_per_kind else [])
                   + (["--seed", str(a.seed)] if a.seed is not None else []))

    stages = [
        ("data", data_main, ["--raw-dir", a.raw_dir, "--out-dir", a.data_dir, "--model-path", str(model)]
         + (["--sft-max", str(a.sft_max)] if a.sft_max else [])),
        ("dapt", train_main, phase_argv("dapt", model, Path(a.data_dir), dapt_out, tiny, precision, a.seed, a.dapt_steps)),
        ("sft", train_main, phase_argv("sft", model, Path(a.data_dir), sft_out, tiny, precision, a.seed, a.sft_steps,
                                       base_adapter=dapt_out)),
        ("check", check_main, ["--run-dir", str(sft_out), "--limit", str(a.check_limit), "--seed", str(a.check_seed)]
         + (["--threshold", str(a.check_threshold)] if a.check_threshold is not None else [])),
    ] + [(f"eval {name}", eval_main, eval_common + (["--adapter", str(adapter)] if adapter else [])
          + ["--out", str(out), "--title", name]) for name, (adapter, out) in evals.items()]
    checks_failed = False
    for name, fn, args in stages:
        banner(f"[flow] stage {name}: {' '.join(args)}")
        t = time.perf_counter()
        rc = fn(args)
        times[name] = time.perf_counter() - t
        if name == "check" and rc == 1 and (sft_out / "post_training_report.json").is_file():
            # Failed checks are a verdict on the trained model, not a broken run: the evaluations still say what
            # the phases did, and the flow exits 1 after them.
            checks_failed = True
            continue
        if rc != 0:
            banner(f"[flow] stage {name} FAILED (exit {rc}) after {time.perf_counter() - t0:.0f}s; "
                   "the messages above say why. Later stages were not run.")
            return rc

    # The pages the loop wrote at the end of training lacked the checks and evaluations made since.
    write_report([dapt_out])
    write_report([sft_out])
    overview = write_report([sft_out, dapt_out], models_dir / "report.html")
    report = json.loads((sft_out / "post_training_report.json").read_text())
    reports = {name: json.loads(out.read_text()) for name, (_, out) in evals.items()}
    total = time.perf_counter() - t0
    banner(f"[flow] C64 evaluation{' of the STAND-IN model' if tiny else ''}: base, after DAPT, after SFT "
           f"(docs/usage.md#runsh-eval)\n{comparison(reports)}")
    verdict = "post-training checks FAILED (the flow exits 1)" if checks_failed else "DONE"
    banner(f"[flow] {verdict} in {total / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})\n"
           f"[flow] reasoning contract on sampled validation generations: {report['contract_floor']['line']} "
           f"(greedy: {report['greedy_contract_pass_rate']:.1%})\n"
           f"[flow] adapter: {sft_out} (SFT on top of {dapt_out}); reports: {sft_out / 'post_training_report.json'}, "
           f"{', '.join(str(out) for _, out in evals.values())}\n"
           f"[flow] curves and results: {overview} (both phases), {sft_out / 'report.html'}, {dapt_out / 'report.html'}")
    (sft_out / "flow_summary.json").write_text(json.dumps({
        "model": str(model), "tiny": tiny, "precision": precision, "stage_seconds": times, "total_seconds": total,
        "contract_pass_rate": report["contract_pass_rate"], "contract_floor": report["contract_floor"],
        "greedy_contract_pass_rate": report["greedy_contract_pass_rate"], "checks_passed": report["passed"],
        "evaluation": {name: {k: r.get(k) for k in EVAL_SUMMARY_FIELDS} for name, r in reports.items()}}, indent=1))
    return 1 if checks_failed else 0


if __name__ == "__main__":
    sys.exit(main())
