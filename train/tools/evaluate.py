"""The C64 evaluation: what a model (base, or base + adapter) knows and whether it keeps the reasoning contract.

    ./run.sh eval --model-path M [--adapter DIR] [--out FILE] [--seed 0] [--no-greedy]

Measurements, written to eval_report.json with a one-screen summary:
- C64 questions with one exactly checkable value each (KERNAL entry points, BASIC token values and error
  numbers, memory-map labels, opcode bytes, SID frequency values, PETSCII control codes), generated from the
  reference tables about the rows held out of the SFT data (data/held_out.py). The score is an exact match on
  the value the final answer (after [/THINK]) states, $D020 and 53280 counting as the same. Questions about
  rows the SFT data did train are asked and scored apart ("trained facts"), when the SFT data is at hand;
- the reasoning-contract pass rate of the same generations; a generation cut by the token budget is counted
  apart from one that broke the contract; the think length (median and p95 tokens of the [THINK] part);
- the per-token loss on held-out C64 documents (the DAPT validation split), per document and over all.

The questions are answered as the model is served: sampled with the model's recommended settings
(generation.sampling_settings) and a seed, so a run repeats. Greedy answers to the same questions are the
second figure (--no-greedy skips them): greedy decoding loops where sampling does not, so the two together
tell a looping model from one that does not know the answer.
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
                                    load_for_inference, prompt_ids, sampling_settings, think_summary)

SUMMARY_SAMPLES = 3


def accuracy(items: list, correct: list[bool]) -> dict:
    """Exact-answer accuracy of questions `items` (data.held_out.Item), overall and per table/kind."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for it, ok in zip(items, correct):
        by_kind[f"{it.table}/{it.kind}"].append(ok)
    return {"accuracy": sum(correct) / len(correct) if correct else None, "correct": sum(correct),
            "total": len(correct), "by_kind": {k: {"correct": sum(v), "total": len(v)} for k, v in sorted(by_kind.items())}}


@torch.no_grad()
def document_loss(model, tokenizer, docs: list[dict], max_length: int, device: torch.device, batch_rows: int = 4,
                  max_tokens: int | None = None) -> dict:
    """Per-token cross-entropy on each document, packed into max_length blocks as DAPT trains, and over all.

    Each document is scored on its own (its first `max_tokens` tokens when set), so a report can show how the
    loss moves on every held-out document, not only on the longest one.
    """
    from train.batching import collate, pack_documents, to_device
    from train.device import autocast
    from train.lora_model import causal_lm
    from train.loss import labels_only_loss_sum

    lm = causal_lm(model)
    precision = "bf16" if next(lm.parameters()).dtype == torch.bfloat16 else "fp32"
    per_doc = []
    for doc in docs:
        rows, _ = pack_documents([doc], tokenizer, max_length)
        if max_tokens:
            rows = rows[:max(1, math.ceil(max_tokens / max_length))]
        total, tokens = 0.0, 0
        for i in range(0, len(rows), batch_rows):
            batch = collate(rows[i:i + batch_rows])
            with autocast(device, precision):
                total += float(labels_only_loss_sum(lm, to_device(batch, device), 1024))
            tokens += batch["n_label_tokens"]
        per_doc.append({"id": doc.get("id"), "tokens": tokens, "loss": total / tokens if tokens else float("nan"),
                        "total": total})
    total, tokens = sum(d.pop("total") for d in per_doc), sum(d["tokens"] for d in per_doc)
    loss = total / tokens if tokens else float("nan")
    scored = [d["loss"] for d in per_doc if d["tokens"]]
    return {"documents": len(docs), "ids": [d.get("id") for d in docs], "tokens": tokens, "max_length": max_length,
            "max_tokens_per_document": max_tokens, "loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"),
            "mean_document_loss": sum(scored) / len(scored) if scored else float("nan"), "per_document": per_doc}


def generate_all(model, prompts: list[list[int]], budget: int, batch_size: int, device: torch.device,
                 sampling: dict | None, seed: int, desc: str) -> list[list[int]]:
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=f"[eval] {desc}", unit="batch", file=sys.stderr):
        out += generate_turns(model, prompts[i:i + batch_size], budget, batch_size, device, sampling, seed + i)
    return out


def scored(sets: dict[str, list], generations: list[list[int]], tokenizer, budget: int) -> tuple[dict, dict]:
    """The figures of one decoding (facts per set, contract, think length, cut share) and its answers per set;
    `generations` answer the questions of `sets` in order."""
    judged = [judge_generation(g, tokenizer, budget) for g in generations]
    answers, k = {}, 0
    for name, its in sets.items():
        answers[name] = [{"answer": j.answer, "correct": it.correct(j.answer), "status": j.status,
                          "codes": list(j.codes), "generated_tokens": len(g)}
                         for it, g, j in zip(its, generations[k:k + len(its)], judged[k:k + len(its)])]
        k += len(its)
    contract = contract_summary(judged, budget)
    facts = {name: accuracy(sets[name], [a["correct"] for a in answers[name]]) for name in sets}
    figures = {"held_out_facts": facts["held_out"], "trained_facts": facts.get("trained"), "contract": contract,
               "think_tokens": think_summary(generations),
               "cut_share": contract["cut_by_budget"] / max(1, contract["total"])}
    return figures, answers


def evaluate(model_path: Path, adapter: Path | None, sft_dir: Path, dapt_dir: Path, reference_dir: Path,
             template_path: Path, max_new_tokens: int | None, max_length: int, per_kind: int, device: torch.device,
             batch_size: int = 16, seed: int = 0, greedy: bool = True, doc_max_tokens: int | None = None) -> dict:
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
    prompts = [prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": it.question}],
                          tokenizer, template, default_system)[1] for its in sets.values() for it in its]
    budget = max_new_tokens or generation_budget(model_path)
    model = load_for_inference(model_path, adapter, device)
    sampling = sampling_settings(model_path)
    decodings = {"sampled": sampling} | ({"greedy": None} if greedy else {})
    figures, answers, gen_s = {}, {}, {}
    for name, decoding in decodings.items():
        t_gen = time.perf_counter()
        generations = generate_all(model, prompts, budget, batch_size, device, decoding, seed, name)
        gen_s[name] = round(time.perf_counter() - t_gen, 1)
        figures[name], answers[name] = scored(sets, generations, tokenizer, budget)
    results = {name: [] for name in sets}
    for name, its in sets.items():
        for k, it in enumerate(its):
            results[name].append({"table": it.table, "kind": it.kind, "group": it.group, "question": it.question,
                                  "expected": it.expected, "reference": it.reference, **answers["sampled"][name][k]}
                                 | ({"greedy": answers["greedy"][name][k]} if greedy else {}))

    dapt_val = dapt_dir / "validation.jsonl"
    docs = read_jsonl(dapt_val) if dapt_val.is_file() else []
    doc = document_loss(model, tokenizer, docs, max_length, device, max_tokens=doc_max_tokens) if docs else None
    return {
        "model_path": str(model_path), "adapter": str(adapter) if adapter else None,
        "stand_in": (model_path / "stand_in.json").is_file(),
        "decoding": {"sampled": {k: v for k, v in sampling.items() if k != "do_sample"} | {"seed": seed},
                     "greedy_too": greedy},
        **figures["sampled"],
        "trained_facts_note": None if "trained" in sets else f"{train_file} not found: trained facts not asked",
        "greedy": figures.get("greedy"),
        "document_loss": doc | {"source": str(dapt_val)} if doc else None,
        "generation": {"device": str(device), "seconds": gen_s, "prompts": len(prompts)},
        "seconds": round(time.perf_counter() - t0, 1),
        "items": results,
    }


def decoding_label(report: dict) -> str:
    """'sampled (temperature 0.7, top-p 0.95, seed 0)' from the report's decoding."""
    d = report["decoding"]["sampled"]
    names = {"temperature": "temperature", "top_p": "top-p", "top_k": "top-k", "min_p": "min-p",
             "repetition_penalty": "repetition penalty", "seed": "seed"}
    return "sampled (" + ", ".join(f"{names.get(k, k)} {v}" for k, v in d.items()) + ")"


def facts(part: dict | None) -> str:
    return "not asked" if part is None else f"{part['correct']}/{part['total']} ({part['accuracy']:.0%})"


def think(part: dict) -> str:
    return "no [THINK] opened" if not part["measured"] else f"median {part['median']}, p95 {part['p95']} tokens"


def summary_lines(report: dict, title: str) -> list[str]:
    c, d, g = report["contract"], report["document_loss"], report.get("greedy")

    def also(key, fmt):
        return f"   greedy: {fmt(g[key])}" if g else ""

    def contract(part):
        return f"{part['passed']}/{part['total']} ({part['rate']:.0%})"

    lines = [f"[eval] {title}: {report['model_path']}" + (f" + {report['adapter']}" if report["adapter"] else ""),
             f"  decoding: {decoding_label(report)}" + ("; greedy as the second figure" if g else ""),
             f"  held-out C64 facts (never a Q/A pair in SFT)   {facts(report['held_out_facts'])}"
             + also("held_out_facts", facts),
             f"  trained C64 facts (rows the SFT data covers)    {facts(report['trained_facts'])}"
             + also("trained_facts", facts),
             f"  reasoning contract on these generations        {contract(c)}; "
             f"{c['broke_contract']} broke it {c['failure_codes'] or ''}, {c['cut_by_budget']} cut by the "
             f"{c['max_new_tokens']}-token budget" + also("contract", contract),
             f"  think length ([THINK] part)                    {think(report['think_tokens'])}"
             + also("think_tokens", think),
             "  held-out C64 document loss                     " +
             (f"{d['loss']:.3f} nats/token over {d['tokens']} tokens of {d['documents']} document(s)" if d
              else "no DAPT validation split found")]
    for doc in (d or {}).get("per_document", []):
        lines.append(f"    {str(doc['id'])[:42]:42s} {doc['loss']:.3f} over {doc['tokens']} tokens")
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
    ap.add_argument("--doc-max-tokens", type=int, default=None,
                    help="score at most this many tokens of each held-out document (default: all of it)")
    ap.add_argument("--per-kind", type=int, default=10, help="questions per question kind and set")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts generated for at once")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same answers")
    ap.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=True,
                    help="also answer greedily, the second figure (--no-greedy: sampled answers only)")
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
                          resolve_device(a.device), a.batch_size, a.seed, a.greedy, a.doc_max_tokens)
    except UserError as e:
        print(f"eval: {e}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\n".join(summary_lines(report, a.title)) + f"\n[eval] report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
