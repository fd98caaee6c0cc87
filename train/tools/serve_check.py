"""Smoke test of a served model against the local one (docs/usage.md, "Serving").

    ./run.sh serve-check URL --model-path M [--adapter RUN_DIR] [--model NAME] [--base-model NAME]
                         [--questions 8] [--max-tokens 256] [--device auto] [--out FILE.json]

URL is an OpenAI-compatible endpoint (vLLM, llama-server, Ollama: http://HOST:PORT/v1). The same C64 questions,
with the training system prompt (SYSTEM_PROMPT.txt + the C64 specialization) as the system message, go greedily
(temperature 0) to the served model and to the local transformers model (M, with --adapter RUN_DIR if the
server applies an adapter). It reports, per question and in total:
  - agreement: the served reasoning + answer text equals the local one (control tokens aside); a server that
    drops the control tokens from its text (llama-cpp-python's) is compared on the whole text, and named;
  - the contract rate: served turns with a non-empty reasoning, a non-empty answer and a natural stop (a turn
    whose [THINK] markers the server dropped has no reasoning a client can see, so it fails);
  - with --base-model NAME (the base served next to the adapter, e.g. vLLM --enable-lora): how many answers the
    adapter changed; none changed means the adapter is served as a no-op.
Exit 0 when every answer agrees (and, with --base-model, the adapter changed at least one), else 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from contract.errors import UserError
from contract.tokens import THINK_CLOSE, THINK_OPEN

# Greedy questions of the check: short C64 prompts of several kinds (facts, code, explanation).
QUESTIONS = [
    "What does POKE 53280,0 do?", "How do I clear the screen in BASIC?", "What is the SID chip?",
    "Explain LDA #$00.", "Where is screen memory on the C64?", "What does the KERNAL routine CHROUT do?",
    "How many sprites can the VIC-II show?", "What is $D020?", "Write a loop that prints HELLO ten times.",
]


def conversations(model_dir: Path, questions: list[str]) -> list[list[dict]]:
    from contract.prompt import system_prompt_for
    system = system_prompt_for(model_dir)
    return [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]


def rendered_prompts(model_dir: Path, questions: list[str]) -> tuple[list[str], list[list[int]]]:
    """The questions as the model sees them: its own chat template, the training system prompt, its tokenizer."""
    from train.pretrained import load_tokenizer
    tokenizer = load_tokenizer(model_dir)
    template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    texts = [tokenizer.apply_chat_template(c, chat_template=template, tokenize=False, add_generation_prompt=True)
             for c in conversations(model_dir, questions)]
    return texts, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def split_turn(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a turn written as [THINK]reasoning[/THINK]answer; ("", text) without [THINK]."""
    if text.startswith(THINK_OPEN) and THINK_CLOSE in text:
        reasoning, _, answer = text[len(THINK_OPEN):].partition(THINK_CLOSE)
        return reasoning, answer
    return "", text


def local_turns(model_dir: Path, adapter: str | None, questions: list[str], max_tokens: int, device: str) -> list[dict]:
    from train.device import resolve_device
    from train.pretrained import load_tokenizer
    from train.tools.generation import generate_turns, load_for_inference
    dev = resolve_device(device)
    _, prompts = rendered_prompts(model_dir, questions)
    model = load_for_inference(model_dir, adapter, dev)
    tokenizer = load_tokenizer(model_dir)
    turns = []
    for ids in generate_turns(model, prompts, max_tokens, 1, dev):
        text = tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id], skip_special_tokens=False)
        reasoning, answer = split_turn(text)
        turns.append({"reasoning": reasoning, "answer": answer, "stopped": ids[-1:] == [tokenizer.eos_token_id]})
    return turns


def served_turn(url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One greedy chat completion; the reasoning from the server's reasoning parser (reasoning_content or
    reasoning) or, without one, from [THINK]...[/THINK] left in the text."""
    # A repetition penalty of 1 under both names engines use: llama.cpp's servers default to 1.1, which is not
    # greedy decoding. skip_special_tokens (vLLM) keeps [THINK]/[/THINK] in the text without a reasoning parser.
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens,
            "skip_special_tokens": False, "seed": 0, "repetition_penalty": 1.0, "repeat_penalty": 1.0}
    choice = _post(f"{url}/chat/completions", body)["choices"][0]
    message = choice["message"]
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    content = message.get("content") or ""
    markers = bool(reasoning) or THINK_OPEN in content
    if not reasoning:
        reasoning, content = split_turn(content.removeprefix("<s>"))
    return {"reasoning": reasoning, "answer": content.removesuffix("</s>"), "markers": markers,
            "stopped": choice.get("finish_reason") == "stop"}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from e
    except urllib.error.URLError as e:
        raise UserError(f"{url}: {e.reason}; is the server up?") from e


def served_models(url: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=60) as response:
            return [m["id"] for m in json.loads(response.read())["data"]]
    except urllib.error.URLError as e:
        raise UserError(f"{url}/models: {e}; is the server up?") from e


def same(a: dict, b: dict) -> bool:
    """Two turns agree: the same reasoning and answer, or, when either server dropped the [THINK] markers (so
    reasoning and answer are one text), the same text."""
    if a.get("markers", True) and b.get("markers", True):
        return (a["reasoning"].strip(), a["answer"].strip()) == (b["reasoning"].strip(), b["answer"].strip())

    def text(turn: dict) -> str:
        return (turn["reasoning"] + turn["answer"]).replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()
    return text(a) == text(b)


def check(url: str, model_dir: Path, adapter: str | None, model: str | None, base_model: str | None,
          questions: list[str], max_tokens: int, device: str) -> dict:
    url = url.rstrip("/")
    model = model or served_models(url)[0]
    chats = conversations(model_dir, questions)
    served = [served_turn(url, model, c, max_tokens) for c in chats]
    local = local_turns(model_dir, adapter, questions, max_tokens, device)
    rows = [{"question": q, "agrees": same(s, l), "served": s, "local": l} for q, s, l in zip(questions, served, local)]
    report = {"url": url, "model": model, "model_path": str(model_dir), "adapter": adapter, "max_tokens": max_tokens,
              "agreement": sum(r["agrees"] for r in rows), "questions": len(rows),
              "contract": sum(bool(s["reasoning"].strip() and s["answer"].strip() and s["stopped"]) for s in served),
              "without_markers": sum(not s["markers"] for s in served), "rows": rows}
    if base_model:
        base = [served_turn(url, base_model, c, max_tokens) for c in chats]
        report["base_model"] = base_model
        report["changed_by_adapter"] = sum(not same(b, s) for b, s in zip(base, served))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run.sh serve-check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    ap.add_argument("--model-path", required=True, help="the local model folder (the merged export, or the base)")
    ap.add_argument("--adapter", default=None, metavar="RUN_DIR", help="the run whose adapter the server applies")
    ap.add_argument("--model", default=None, help="served model name to ask (default: the first the server lists)")
    ap.add_argument("--base-model", default=None, help="served name of the base without the adapter: also report "
                    "how many answers the adapter changed")
    ap.add_argument("--questions", type=int, default=8, help=f"how many of the {len(QUESTIONS)} questions")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the full report (every answer) as JSON")
    a = ap.parse_args(argv)
    try:
        report = check(a.url, Path(a.model_path), a.adapter, a.model, a.base_model, QUESTIONS[:a.questions],
                       a.max_tokens, a.device)
    except UserError as e:
        print(f"serve-check: {e}", file=sys.stderr)
        return 1
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for row in report["rows"]:
        print(f"{'same' if row['agrees'] else 'DIFF'}  {row['question']}")
    n = report["questions"]
    print(f"serve-check {report['url']} model {report['model']}: {report['agreement']}/{n} answers equal to local "
          f"transformers (greedy, {report['max_tokens']} tokens); contract {report['contract']}/{n}")
    if report["without_markers"]:
        print(f"  {report['without_markers']}/{n} served turns carry no [THINK] markers: the server drops control "
              "tokens from its text, so those were compared as one text and fail the contract (a client cannot "
              "tell their reasoning from the answer)")
    ok = report["agreement"] == n
    if "changed_by_adapter" in report:
        print(f"  the adapter changed {report['changed_by_adapter']}/{n} answers against {report['base_model']}"
              + (" -- served as a NO-OP" if report["changed_by_adapter"] == 0 else ""))
        ok = ok and report["changed_by_adapter"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
