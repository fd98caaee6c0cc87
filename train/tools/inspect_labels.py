"""Show what the SFT loss will train on: per example, input_ids, labels and the supervised spans.

    python -m train.tools.inspect_labels --model-path M --sft-dir D [--split train]
        [--chat-template-path templates/mistral3_chat_template_assistant_mask.jinja] [--limit N] [--out FILE.jsonl]

Supervised tokens stand out in the terminal view (colour on a terminal, ⟦…⟧ otherwise). The same strict
checks as training run first; any finding is printed and the command exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.errors import UserError
from contract.prompt import read_model_system_prompt
from contract.tokens import IGNORE_INDEX
from train.batching import read_jsonl
from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
from train.masking import StrictMaskingError, encode_dataset, read_template

DEFAULT_TEMPLATE = PROJECT_ROOT / DEFAULT_TEMPLATE_PATH

_GREEN_BOLD, _DIM, _RESET = "\033[1;32m", "\033[2m", "\033[0m"
_OPEN_BRACKET, _CLOSE_BRACKET = "⟦", "⟧"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="train.tools.inspect_labels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True, help="model folder (tokenizer.json, SYSTEM_PROMPT.txt)")
    ap.add_argument("--sft-dir", required=True, help="folder holding {split}.jsonl SFT rows")
    ap.add_argument("--split", default="train")
    ap.add_argument("--chat-template-path", default=str(DEFAULT_TEMPLATE))
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows")
    ap.add_argument("--out", default=None, help="write one JSON line per example here")
    ap.add_argument("--max-length", type=int, default=None,
                    help="also check that truncation to this many tokens keeps every supervised turn whole")
    ap.add_argument("--no-strict", action="store_true",
                    help="show the examples even when strict checks fail (findings become warnings)")
    return ap.parse_args(argv)


def example_record(enc, tokenizer) -> dict:
    spans = [{"token_start": a, "token_end": b, "n_tokens": b - a,
              "text": tokenizer.decode(enc.input_ids[a:b], skip_special_tokens=False)}
             for a, b in enc.token_spans]
    supervised = [i for i, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]
    return {"id": enc.example_id, "input_ids": enc.input_ids, "labels": enc.labels,
            "text": tokenizer.decode(enc.input_ids, skip_special_tokens=False),
            "supervised_spans": spans, "n_tokens": len(enc.input_ids), "n_supervised": len(supervised),
            "first_supervised_id": supervised[0] if supervised else None,
            "last_supervised_id": supervised[-1] if supervised else None}


def render_view(enc, tokenizer, colour: bool) -> str:
    """The decoded example with supervised stretches highlighted, token-accurately (decoded from the ids)."""
    pieces, pos = [], 0
    for a, b in enc.token_spans:
        pieces.append(_plain(tokenizer.decode(enc.input_ids[pos:a], skip_special_tokens=False), colour))
        pieces.append(_supervised(tokenizer.decode(enc.input_ids[a:b], skip_special_tokens=False), colour))
        pos = b
    pieces.append(_plain(tokenizer.decode(enc.input_ids[pos:], skip_special_tokens=False), colour))
    return "".join(pieces)


def _plain(text: str, colour: bool) -> str:
    return f"{_DIM}{text}{_RESET}" if colour and text else text


def _supervised(text: str, colour: bool) -> str:
    return f"{_GREEN_BOLD}{text}{_RESET}" if colour else f"{_OPEN_BRACKET}{text}{_CLOSE_BRACKET}"


def _header(record: dict) -> str:
    return (f"== {record['id']}: {record['n_tokens']} tokens, {record['n_supervised']} supervised in "
            f"{len(record['supervised_spans'])} turn(s), first supervised id {record['first_supervised_id']}, "
            f"last supervised id {record['last_supervised_id']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from train.pretrained import load_tokenizer

    data_file = Path(args.sft_dir) / f"{args.split}.jsonl"
    try:
        tokenizer = load_tokenizer(args.model_path)
        default_system = read_model_system_prompt(args.model_path)
        template = read_template(args.chat_template_path)
        rows = read_jsonl(data_file, limit=args.limit)
        examples, summary = encode_dataset(rows, tokenizer, template, max_length=args.max_length,
                                           strict=not args.no_strict, default_system_message=default_system,
                                           progress=False)
    except StrictMaskingError as e:
        print(f"inspect: {data_file}: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"inspect: {e}", file=sys.stderr)
        return 2

    colour = sys.stdout.isatty()
    records = [example_record(enc, tokenizer) for enc in examples]
    for enc, record in zip(examples, records):
        print(_header(record))
        print(render_view(enc, tokenizer, colour))
        print()
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{summary['n_kept']} of {summary['n_rows']} example(s) kept, {summary['supervised_tokens']} of "
          f"{summary['total_tokens']} tokens supervised"
          + (f"; written to {args.out}" if args.out else ""))
    for item in summary["dropped"]:
        print(f"dropped [{item['id']}] {item['code']}: {item['message']}")
    for code, count in sorted(summary["warnings"].items()):
        print(f"warning {code}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
