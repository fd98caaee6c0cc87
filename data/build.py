"""Build the processed data and its validation report.

    python -m data.build [--raw-dir data/raw] [--out-dir data/processed] [--model-path M] ...

Reads the raw corpus (.txt/.md/.json documents, *.jsonl SFT rows) and the reference tables, and writes
    <out>/dapt/{train,validation}.jsonl     {"id", "source", "text"}
    <out>/sft/{train,validation}.jsonl      {"id", "source", "messages"}
    <out>/validation_report.json
Exit status: 0 when every risk signal passes (or --allow-risk), 1 when one fails, 2 on a usage error.
Raw inputs are only ever read. See docs/data.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from contract.errors import UserError
from data import conversations, dapt_corpus, discover, held_out, risk_signals, split, think_metrics
from data import rejections as R
from data.reference_tables import TABLE_NAMES, load_tables
from data.reference_text import render
from data.sft_generate import available_kinds, generate
from data.sft_ingest import Row, TurnStats, read_jsonl
from data.token_counter import TokenCounter, length_stats

from train.config import DEFAULT_MODEL_PATH, DEFAULT_TEMPLATE_PATH, PROJECT_ROOT

DEFAULT_RAW = PROJECT_ROOT / "data" / "raw"
DEFAULT_OUT = PROJECT_ROOT / "data" / "processed"
DEFAULT_MODEL = PROJECT_ROOT / DEFAULT_MODEL_PATH
DEFAULT_TEMPLATE = PROJECT_ROOT / DEFAULT_TEMPLATE_PATH
DEFAULT_SFT_MAX = 2000
SHORT_ASSISTANT_TOKENS = 300


class UsageError(UserError):
    """A flag or input folder of the data step is unusable."""


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m data.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw-dir", type=Path, default=DEFAULT_RAW, help="raw corpus folder (default: data/raw)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output folder (default: data/processed)")
    ap.add_argument("--model-path", type=Path, default=None,
                    help="model folder: its SYSTEM_PROMPT.txt, tokenizer.json and chat_template.jinja are used "
                         "(default: models/Ministral-3-8B-Thinking when it exists)")
    ap.add_argument("--reference-dir", type=Path, default=None,
                    help="reference tables folder (default: RAW/reference, else RAW/../reference)")
    ap.add_argument("--sft-input", type=Path, action="append", default=[], metavar="FILE",
                    help="SFT JSONL file with {'messages': [...]} rows (repeatable); *.jsonl under --raw-dir are "
                         "read too")
    ap.add_argument("--sft-max", type=int, default=DEFAULT_SFT_MAX,
                    help=f"at most this many generated conversations (default {DEFAULT_SFT_MAX}; 0 = none)")
    ap.add_argument("--validation-fraction", type=float, default=0.05,
                    help="share of documents / SFT groups held out for validation (default 0.05)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split and the generator (default 0)")
    ap.add_argument("--max-length", type=int, default=2048,
                    help="conversations longer than this many tokens are left out (needs a model; default 2048)")
    ap.add_argument("--chat-template-path", type=Path, default=DEFAULT_TEMPLATE,
                    help="training template checked for {%% generation %%} blocks "
                         "(default: templates/mistral3_chat_template_assistant_mask.jinja)")
    ap.add_argument("--allow-risk", action="store_true", help="exit 0 even when a risk signal fails")
    args = ap.parse_args(argv)
    if not 0.0 < args.validation_fraction < 1.0:
        ap.error("--validation-fraction must be between 0 and 1 (exclusive)")
    if args.sft_max < 0:
        ap.error("--sft-max must be >= 0")
    if args.max_length < 1:
        ap.error("--max-length must be >= 1")
    return args


def log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def progress(total: int, desc: str):
    return tqdm(total=total, desc=f"[data] {desc}", unit="file" if "read" in desc else "it", file=sys.stderr,
                disable=None, leave=False)


# --- model, system prompt, tokenizer --------------------------------------------------------------

@dataclass
class ModelSetup:
    path: Path | None
    system_prompt: str
    prompt_source: str
    tokenizer: object = None


def resolve_model(model_path: Path | None) -> ModelSetup:
    from contract.prompt import PromptContractError, build_system_prompt, system_prompt_for

    chosen = model_path
    if chosen is None and DEFAULT_MODEL.is_dir():
        chosen = DEFAULT_MODEL
    if chosen is None:
        from contract.prompt import STAND_IN_SYSTEM_PROMPT
        log("NOTICE: no model folder given and models/Ministral-3-8B-Thinking does not exist.")
        log("NOTICE: SFT system prompts use the tiny model's STAND-IN SYSTEM_PROMPT + the C64 specialization.")
        log("NOTICE: rebuild with --model-path <real checkpoint> before training the real model, or its prompt-"
            "contract check will reject every example. Token figures below are whitespace words.")
        return ModelSetup(None, build_system_prompt(STAND_IN_SYSTEM_PROMPT), "stand_in")
    if not chosen.is_dir():
        raise UsageError(f"--model-path {chosen}: not a folder")
    try:
        system = system_prompt_for(chosen)
    except PromptContractError as e:
        raise UsageError(str(e)) from e
    from train.pretrained import CheckpointError, load_tokenizer
    try:
        tok = load_tokenizer(chosen)
    except CheckpointError as e:
        raise UsageError(str(e)) from e
    template = chosen / "chat_template.jinja"
    if template.is_file():
        # The folder's template is what training renders with; never rely on a copy inside tokenizer_config.
        tok.chat_template = template.read_text(encoding="utf-8")
    elif not getattr(tok, "chat_template", None):
        raise UsageError(f"{template}: missing, and the tokenizer has no chat template to count tokens with")
    return ModelSetup(chosen, system, "model" if model_path is not None else "default_model", tok)


# --- DAPT -----------------------------------------------------------------------------------------

def build_dapt(found, raw_dir: Path, tables: dict, args, rejections, report_inputs):
    pairs = []
    bar = progress(len(found.documents), "read documents")
    for path in found.documents:
        doc_id = discover.relative(path, raw_dir)
        report_inputs["bytes"] += path.stat().st_size
        for piece_id, text in dapt_corpus.load_document(path, doc_id, rejections):
            pairs.append((piece_id, doc_id, text))
        bar.update(1)
    bar.close()
    for name in TABLE_NAMES:
        if name in tables:
            pairs.append((f"reference/{name}.json", f"reference/{name}.json", render(name, tables[name])))
    rule_counts: dict[str, int] = {}
    docs = dapt_corpus.normalise_documents(pairs, rejections, rule_counts)
    bar = progress(len(docs), "near-duplicate scan")
    kept, dups = dapt_corpus.remove_duplicates(docs, rejections, progress=bar)
    bar.close()
    dapt_corpus.assign_splits(kept, args.validation_fraction, args.seed)
    return kept, dups, rule_counts


# --- SFT ------------------------------------------------------------------------------------------

def build_sft(found, raw_dir: Path, tables: dict, setup: ModelSetup, args, rejections, turns: TurnStats,
              report_inputs) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    # Evaluation-only facts (data/held_out.py): no Q/A pair about a held-out row, and no example that states one.
    facts = held_out.held_out_facts(tables)
    skipped = {"held_out_row": 0, "states_held_out_fact": 0}

    def exclude(ex) -> bool:
        reason = ("held_out_row" if held_out.is_held_out(ex.group) else
                  "states_held_out_fact" if held_out.leaks(f"{ex.question}\n{ex.reasoning}\n{ex.answer}", facts)
                  else None)
        if reason:
            skipped[reason] += 1
        return reason is not None

    bar = progress(len(available_kinds(tables)), "generate SFT")
    examples = generate(tables, args.sft_max, args.seed, progress=bar, exclude=exclude) if tables else []
    bar.close()
    report_inputs["held_out_for_eval"] = {"fraction_of_rows": held_out.HELD_OUT_FRACTION, "facts": len(facts),
                                          "generated_examples_skipped": skipped}
    for ex in examples:
        assistant = {"role": "assistant", "content": f"[THINK]{ex.reasoning}[/THINK]{ex.answer}"}
        checked = conversations.check([{"role": "user", "content": ex.question}, assistant], setup.system_prompt)
        turns.checked += checked.turns_checked
        turns.valid += checked.turns_valid
        row_id = "gen-" + hashlib.sha1(f"{ex.source}\x00{ex.question}".encode("utf-8")).hexdigest()[:16]
        if checked.messages is None:
            rejections.add("sft", ex.source, None, checked.reason, checked.detail, id=row_id)
            continue
        rows.append(Row(row_id, ex.source, "gen:" + ex.group, checked.messages, ex.source, None))

    files = [(p, discover.relative(p, raw_dir)) for p in found.sft_files]
    files += [(p, str(p)) for p in args.sft_input]
    for path, shown in files:
        if not path.is_file():
            rejections.add("sft", shown, None, R.UNREADABLE_FILE, "no such file")
            continue
        report_inputs["bytes"] += path.stat().st_size
        rows += read_jsonl(path, shown, setup.system_prompt, rejections, turns)

    rows = _drop_duplicate_rows(rows, rejections)
    lengths = {}
    if setup.tokenizer is not None:
        rows, lengths = _drop_too_long(rows, setup, args.max_length, rejections)
    side = split.assign([r.group for r in rows], args.validation_fraction, args.seed)
    for r in rows:
        r.split = side[r.group]
    return rows, lengths


def _drop_duplicate_rows(rows: list[Row], rejections) -> list[Row]:
    seen: dict[str, str] = {}
    ids: dict[str, int] = {}
    out = []
    for r in rows:
        key = json.dumps(r.messages, ensure_ascii=False, sort_keys=True)
        if key in seen:
            rejections.add("sft", r.file, r.line, R.DUPLICATE_CONVERSATION, f"same conversation as {seen[key]}", id=r.id)
            continue
        seen[key] = r.id
        if r.id in ids:          # a repeated user-given id: keep the row, make the id unique and stable
            ids[r.id] += 1
            r.id = f"{r.id}~{ids[r.id]}"
        ids.setdefault(r.id, 0)
        out.append(r)
    return out


def _drop_too_long(rows: list[Row], setup: ModelSetup, max_length: int, rejections):
    counter = TokenCounter(setup.tokenizer)
    log(f"tokenizing {len(rows)} SFT conversations with the model's chat template")
    sizes = counter.conversations([r.messages for r in rows])
    out, lengths = [], {}
    for r, n in zip(rows, sizes):
        if n > max_length:
            rejections.add("sft", r.file, r.line, R.TOO_LONG, f"{n} tokens after the chat template > --max-length "
                                                            f"{max_length}", id=r.id)
            continue
        lengths[r.id] = n
        out.append(r)
    return out, lengths


# --- writing --------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write to a temporary file and rename, so an interrupted run never leaves half a split behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _count_by(items, key) -> dict:
    out: dict[str, dict[str, int]] = {}
    for it in items:
        cell = out.setdefault(key(it), {"train": 0, "validation": 0})
        cell[it.split] += 1
    return dict(sorted(out.items()))


def _split_counts(items) -> dict[str, int]:
    return {s: sum(1 for it in items if it.split == s) for s in ("train", "validation")}


# --- main -----------------------------------------------------------------------------------------

def run(args) -> int:
    t0 = time.perf_counter()
    raw_dir = args.raw_dir
    if not raw_dir.is_dir():
        raise UsageError(f"--raw-dir {raw_dir}: no such folder")
    if args.reference_dir is not None and not args.reference_dir.is_dir():
        raise UsageError(f"--reference-dir {args.reference_dir}: no such folder")
    setup = resolve_model(args.model_path)
    rejections = R.Rejections()
    reference_dir = discover.find_reference_dir(raw_dir, args.reference_dir)
    found = discover.discover(raw_dir, reference_dir, rejections, skip=[args.out_dir])
    report_inputs = {"bytes": 0}

    tables: dict = {}
    if reference_dir is not None:
        tables, problems = load_tables(reference_dir)
        for path, reason, detail in problems:
            rejections.add("dapt", str(path), None, reason, detail)
        for path in sorted(reference_dir.glob("*")):
            if path.is_file():
                report_inputs["bytes"] += path.stat().st_size
                if path.suffix == ".json" and path.stem not in TABLE_NAMES:
                    rejections.add("dapt", str(path), None, R.UNSUPPORTED_JSON_SHAPE,
                                   "not one of the known reference tables: " + ", ".join(TABLE_NAMES))
        log(f"reference tables from {reference_dir}: {', '.join(sorted(tables)) or 'none'}")
    else:
        log("NOTICE: no reference tables found (looked for RAW/reference and RAW/../reference; use "
            "--reference-dir): no SFT conversations are generated")

    docs, dups, rule_counts = build_dapt(found, raw_dir, tables, args, rejections, report_inputs)
    turns = TurnStats()
    rows, conv_lengths = build_sft(found, raw_dir, tables, setup, args, rejections, turns, report_inputs)

    out = args.out_dir
    for s in ("train", "validation"):
        write_jsonl(out / "dapt" / f"{s}.jsonl",
                    [{"id": d.id, "source": d.source, "text": d.text} for d in docs if d.split == s])
        write_jsonl(out / "sft" / f"{s}.jsonl",
                    [{"id": r.id, "source": r.source, "group": r.group, "messages": r.messages}
                     for r in rows if r.split == s])

    counter = TokenCounter(setup.tokenizer)
    report = make_report(args, setup, raw_dir, reference_dir, found, tables, docs, dups, rule_counts, rows,
                         conv_lengths, turns, rejections, counter, report_inputs)
    elapsed = time.perf_counter() - t0
    mb = report_inputs["bytes"] / 1e6
    report["timing"] = {"seconds": round(elapsed, 2), "input_megabytes": round(mb, 3),
                        "megabytes_per_second": round(mb / elapsed, 3) if elapsed > 0 else None}
    write_json(out / "validation_report.json", report)
    print_summary(report, out)
    failed = [s for s in report["risk_signals"] if s["verdict"] == "fail"]
    if failed and not args.allow_risk:
        log(f"{len(failed)} risk signal(s) failed; fix the data or pass --allow-risk to accept them")
        return 1
    return 0


def make_report(args, setup, raw_dir, reference_dir, found, tables, docs, dups, rule_counts, rows, conv_lengths,
                turns, rejections, counter, report_inputs) -> dict:
    dapt = {"counts": _split_counts(docs), "by_source": _count_by(docs, lambda d: d.collection),
            "documents_written": len(docs),
            "duplicates_removed": {"exact": sum(1 for d in dups if d.kind == "exact"),
                                   "near": sum(1 for d in dups if d.kind == "near")},
            "normalisation_rules_applied": dict(sorted(rule_counts.items())),
            "documents": [{"id": d.id, "source": d.source, "split": d.split, "chars": len(d.text)} for d in docs]}
    doc_tokens = counter.text([d.text for d in docs])
    dapt["token_lengths"] = {s: length_stats([n for d, n in zip(docs, doc_tokens) if d.split == s])
                             for s in ("train", "validation")}

    sft = {"counts": _split_counts(rows), "by_source": _count_by(rows, lambda r: r.source),
           "generated": sum(1 for r in rows if r.id.startswith("gen-")),
           "user_rows": sum(1 for r in rows if not r.id.startswith("gen-")),
           "groups": {s: len({r.group for r in rows if r.split == s}) for s in ("train", "validation")},
           "held_out_for_eval": report_inputs.get("held_out_for_eval")}
    if conv_lengths:
        conv = {s: length_stats([conv_lengths[r.id] for r in rows if r.split == s]) for s in ("train", "validation")}
    else:
        sizes = dict(zip((r.id for r in rows), counter.conversations([r.messages for r in rows])))
        conv = {s: length_stats([sizes[r.id] for r in rows if r.split == s]) for s in ("train", "validation")}
    assistant = counter.assistant_turns([m["content"] for r in rows for m in r.messages if m["role"] == "assistant"])
    sft["token_lengths"] = {"conversation": conv, "assistant_turn": length_stats(assistant),
                            "assistant_turns_at_most_300": round(sum(1 for n in assistant if n <= SHORT_ASSISTANT_TOKENS)
                                                                 / len(assistant), 4) if assistant else None}
    sft["max_length"] = args.max_length if setup.tokenizer is not None else None
    sft["too_long_check"] = "done" if setup.tokenizer is not None else "skipped: no model tokenizer"

    cov = think_metrics.coverage(turns.checked, turns.valid)
    written = think_metrics.reasoning_texts(rows)
    div = think_metrics.diversity(written, counter)
    think = {"coverage": cov, "assistant_turns_read": turns.checked, "assistant_turns_valid": turns.valid,
             "coverage_written": think_metrics.coverage(sum(1 for r in rows for m in r.messages
                                                            if m["role"] == "assistant"), len(written)),
             "diversity": div}

    signals = (risk_signals.split_signals("dapt", dapt["counts"]) + risk_signals.split_signals("sft", sft["counts"])
               + [risk_signals.coverage_signal(cov, turns.checked)] + risk_signals.diversity_signals(div)
               + [risk_signals.template_signal(args.chat_template_path)])
    return {
        "inputs": {"raw_dir": str(raw_dir), "reference_dir": str(reference_dir) if reference_dir else None,
                   "reference_tables": sorted(tables), "documents_found": len(found.documents),
                   "sft_files": [discover.relative(p, raw_dir) for p in found.sft_files] + [str(p) for p in args.sft_input],
                   "ignored_files": [{"file": f, "why": why} for f, why in found.ignored],
                   "model_path": str(setup.path) if setup.path else None, "system_prompt_source": setup.prompt_source,
                   "system_prompt_sha256": hashlib.sha256(setup.system_prompt.encode("utf-8")).hexdigest(),
                   "tokens": counter.kind, "chat_template_path": str(args.chat_template_path)},
        "settings": {"validation_fraction": args.validation_fraction, "seed": args.seed, "sft_max": args.sft_max,
                     "max_length": args.max_length},
        "dapt": dapt, "sft": sft, "think": think,
        "rejected_counts": {"dapt": rejections.counts("dapt"), "sft": rejections.counts("sft")},
        "rejected": rejections.as_dicts(),
        "risk_signals": signals,
        "passed": all(s["verdict"] == "pass" for s in signals),
    }


def print_summary(report: dict, out: Path) -> None:
    d, s, t = report["dapt"], report["sft"], report["think"]
    rej = report["rejected_counts"]
    tok = report["inputs"]["tokens"]
    log(f"DAPT: {d['counts']['train']} train / {d['counts']['validation']} validation documents; "
        f"duplicates removed: {d['duplicates_removed']['exact']} exact, {d['duplicates_removed']['near']} near; "
        f"left out: {sum(rej['dapt'].values())} {rej['dapt'] or ''}")
    log(f"SFT: {s['counts']['train']} train / {s['counts']['validation']} validation conversations "
        f"({s['generated']} generated, {s['user_rows']} from JSONL); left out: {sum(rej['sft'].values())} "
        f"{rej['sft'] or ''}")
    div = t["diversity"]
    log(f"THINK coverage {t['coverage']}, distinct reasoning {div['distinct_reasoning_share']}, "
        f"distinct-2 {div['distinct_2']}")
    at = s["token_lengths"]["assistant_turn"]
    if at.get("count"):
        log(f"assistant turn length ({tok} tokens): p50 {at['p50']}, p95 {at['p95']}, max {at['max']}; "
            f"share <= {SHORT_ASSISTANT_TOKENS}: {s['token_lengths']['assistant_turns_at_most_300']}")
    for sig in report["risk_signals"]:
        if sig["verdict"] == "fail":
            log(f"RISK FAIL {sig['name']}" + (f" [{sig.get('phase')}]" if sig.get("phase") else "") +
                f": value {sig['value']} (threshold {sig['comparison']} {sig['threshold']}) - {sig['message']}")
    tm = report.get("timing", {})
    log(f"wrote {out}/dapt, {out}/sft and {out}/validation_report.json in {tm.get('seconds')} s "
        f"({tm.get('input_megabytes')} MB read, {tm.get('megabytes_per_second')} MB/s); "
        f"risk signals: {'all pass' if report['passed'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
