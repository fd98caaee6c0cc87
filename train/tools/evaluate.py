"""The C64 evaluation: what a model (base, or base + adapter) knows and whether it keeps the reasoning contract.

    ./run.sh eval --model-path M [--adapter DIR] [--out FILE]

Three measurements, written to eval_report.json with a one-screen summary:
- C64 questions with one exactly checkable value each (KERNAL entry points, BASIC token values and error
  numbers, memory-map labels, opcode bytes, SID frequency values, PETSCII control codes), generated from the
  reference tables about the rows held out of the SFT data (data/held_out.py). The score is an exact match on
  the value the final answer (after [/THINK]) states, $D020 and 53280 counting as the same. Questions about
  rows the SFT data did train are asked and scored apart ("trained facts"), when the SFT data is at hand;
- the reasoning-contract pass rate of the same greedy generations; a generation cut by the token budget is
  counted apart from one that broke the contract;
- the per-token loss on held-out C64 documents (the DAPT validation split).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from contract.errors import UserError
from train.device import resolve_device
from train.tools.generation import (contract_summary, generation_budget, generate_turns, judge_generation,
                                    load_for_inference, prompt_ids)

SUMMARY_SAMPLES = 3


def accuracy(results: list[dict]) -> dict:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_kind[f"{r['table']}/{r['kind']}"].append(r["correct"])
    correct = sum(r["correct"] for r in results)
    return {"accuracy": correct / len(results) if results else None, "correct": correct, "total": len(results),
            "by_kind": {k: {"correct": sum(v), "total": len(v)} for k, v in sorted(by_kind.items())}}


@torch.no_grad()
def document_loss(model, tokenizer, docs: list[dict], max_length: int, device: torch.device, batch_rows: int = 4) -> dict:
    """Token-weighted mean cross-entropy over the documents, packed into max_length blocks as DAPT trains."""
    from train.batching import collate, pack_documents, to_device
    from train.device import autocast
    from train.lora_model import causal_lm
    from train.loss import labels_only_loss_sum

    rows, stats = pack_documents(docs, tokenizer, max_length)
    lm = causal_lm(model)
    total, tokens = 0.0, 0
    precision = "bf16" if next(lm.parameters()).dtype == torch.bfloat16 else "fp32"
    for i in range(0, len(rows), batch_rows):
        batch = collate(rows[i:i + batch_rows])
        with autocast(device, precision):
            total += float(labels_only_loss_sum(lm, to_device(batch, device), 1024))
        tokens += batch["n_label_tokens"]
    loss = total / tokens if tokens else float("nan")
    return {"documents": len(docs), "ids": [d.get("id") for d in docs], "tokens": tokens, "max_length": max_length,
            "loss": loss, "perplexity": math.exp(loss) if tokens else float("nan")}


def evaluate(model_path: Path, adapter: Path | None, sft_dir: Path, dapt_dir: Path, reference_dir: Path,
             template_path: Path, max_new_tokens: int | None, max_length: int, per_kind: int, device: torch.device,
             batch_size: int = 16) -> dict:
    from contract.prompt import read_model_system_prompt, system_prompt_for
    from data.held_out import is_held_out, question_set
    from data.reference_tables import load_tables
    from train.batching import read_jsonl
    from train.masking import read_template
    from train.pretrained import load_tokenizer

    t0 = time.perf_counter()
    tables, problems = load_tables(reference_dir)
    if problems or not tables:
        raise UserError(f"--reference-dir {reference_dir}: no usable reference tables "
                        f"({'; '.join(f'{p}: {why}' for p, why, _ in problems) or 'none found'})")
    sets = {"held_out": question_set(tables, is_held_out, per_kind)}
    train_file = sft_dir / "train.jsonl"
    if train_file.is_file():
        trained = {r["group"].removeprefix("gen:") for r in read_jsonl(train_file) if "group" in r}
        sets["trained"] = question_set(tables, trained.__contains__, per_kind)

    tokenizer = load_tokenizer(model_path)
    template = read_template(template_path)
    system = system_prompt_for(model_path)
    default_system = read_model_system_prompt(model_path)
    items = [(name, it) for name, its in sets.items() for it in its]
    prompts = [prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": it.question}],
                          tokenizer, template, default_system)[1] for _, it in items]
    budget = max_new_tokens or generation_budget(model_path)
    model = load_for_inference(model_path, adapter, device)
    t_gen = time.perf_counter()
    generations = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="[eval] generate", unit="batch", file=sys.stderr):
        generations += generate_turns(model, prompts[i:i + batch_size], budget, batch_size, device)
    gen_s = time.perf_counter() - t_gen
    judged = [judge_generation(g, tokenizer, budget) for g in generations]
    results = {name: [] for name in sets}
    for (name, it), g, j in zip(items, generations, judged):
        results[name].append({"table": it.table, "kind": it.kind, "group": it.group, "question": it.question,
                              "expected": it.expected, "reference": it.reference, "answer": j.answer,
                              "correct": it.correct(j.answer),
                              "status": j.status, "codes": list(j.codes), "generated_tokens": len(g)})

    dapt_val = dapt_dir / "validation.jsonl"
    docs = read_jsonl(dapt_val) if dapt_val.is_file() else []
    doc = document_loss(model, tokenizer, docs, max_length, device) if docs else None
    return {
        "model_path": str(model_path), "adapter": str(adapter) if adapter else None,
        "stand_in": (model_path / "stand_in.json").is_file(),
        "held_out_facts": accuracy(results["held_out"]),
        "trained_facts": accuracy(results["trained"]) if "trained" in results else None,
        "trained_facts_note": None if "trained" in results else f"{train_file} not found: trained facts not asked",
        "contract": contract_summary(judged, budget),
        "document_loss": doc | {"source": str(dapt_val)} if doc else None,
        "generation": {"device": str(device), "seconds": round(gen_s, 1), "prompts": len(prompts)},
        "seconds": round(time.perf_counter() - t0, 1),
        "items": results,
    }


def summary_lines(report: dict, title: str) -> list[str]:
    def acc(part):
        return "not asked" if part is None else f"{part['correct']}/{part['total']} ({part['accuracy']:.0%})"

    c, d = report["contract"], report["document_loss"]
    lines = [f"[eval] {title}: {report['model_path']}" + (f" + {report['adapter']}" if report["adapter"] else ""),
             f"  held-out C64 facts (never a Q/A pair in SFT)   {acc(report['held_out_facts'])}",
             f"  trained C64 facts (rows the SFT data covers)    {acc(report['trained_facts'])}",
             f"  reasoning contract on these generations        {c['passed']}/{c['total']} ({c['rate']:.0%}); "
             f"{c['broke_contract']} broke it {c['failure_codes'] or ''}, {c['cut_by_budget']} cut by the "
             f"{c['max_new_tokens']}-token budget",
             "  held-out C64 document loss                     " +
             (f"{d['loss']:.3f} nats/token over {d['tokens']} tokens ({d['documents']} document(s))" if d
              else "no DAPT validation split found")]
    for kind, k in report["held_out_facts"]["by_kind"].items():
        lines.append(f"    {kind:42s} {k['correct']}/{k['total']}")
    for r in report["items"]["held_out"][:SUMMARY_SAMPLES]:
        answer = (r["answer"] or "(no final answer)").strip().replace("\n", " ")[:70]
        lines.append(f"  e.g. {r['question'][:60]!r} -> {answer!r} (expected {r['expected']}, "
                     f"{'right' if r['correct'] else 'wrong'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT

    ap = argparse.ArgumentParser(prog="run.sh eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True, help="base model folder (the released checkpoint or the stand-in)")
    ap.add_argument("--adapter", default=None, help="a run folder (its adapter, merged on top of its own base "
                                                    "adapter as it trained); none: the base model alone")
    ap.add_argument("--out", default=None, help="report file (default: ADAPTER/eval_report.json, or "
                                                "eval_report.json in the current folder for a base model)")
    ap.add_argument("--sft-dir", default="data/processed/sft", help="SFT data: which facts were trained")
    ap.add_argument("--dapt-dir", default="data/processed/dapt", help="DAPT data: its validation split is the "
                                                                      "held-out documents")
    ap.add_argument("--reference-dir", default=str(PROJECT_ROOT / "data/raw/reference"),
                    help="the reference tables the questions are generated from")
    ap.add_argument("--chat-template-path", default=str(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH))
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation budget (default: the model's generation_config.json max_new_tokens, else "
                         "16384: real reasoning traces are long)")
    ap.add_argument("--max-length", type=int, default=2048, help="block length for the document loss")
    ap.add_argument("--per-kind", type=int, default=10, help="questions per question kind and set")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts generated for at once")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--title", default="model", help="label in the printed summary")
    a = ap.parse_args(argv)
    model_path, adapter = Path(a.model_path), Path(a.adapter) if a.adapter else None
    for path, flag in ((model_path, "--model-path"), (adapter, "--adapter")):
        if path is not None and not path.is_dir():
            print(f"eval: {flag} {path}: no such folder", file=sys.stderr)
            return 2
    out = Path(a.out) if a.out else (adapter or Path(".")) / "eval_report.json"
    try:
        report = evaluate(model_path, adapter, Path(a.sft_dir), Path(a.dapt_dir), Path(a.reference_dir),
                          Path(a.chat_template_path), a.max_new_tokens, a.max_length, a.per_kind,
                          resolve_device(a.device), a.batch_size)
    except UserError as e:
        print(f"eval: {e}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\n".join(summary_lines(report, a.title)) + f"\n[eval] report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
