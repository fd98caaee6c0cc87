"""Talk to a model: a base folder, a merged export, or a base with a run's adapter (docs/usage.md, "Chat").

    ./run.sh chat --model-path M [--adapter RUN_DIR] [--prompt TEXT] [--greedy] [--seed N] [--max-new-tokens N]

Each turn is rendered with the model folder's own chat_template.jinja and the contract's system prompt
(SYSTEM_PROMPT.txt + the C64 specialization, exactly as in training), sampled with the model's recommended
settings (temperature 0.7 / top-p 0.95 unless the folder's generation_config.json sets its own; --greedy for
checks that must repeat), printed as the tokens come with the reasoning and the answer under their own
headings, and checked against the reasoning contract in token space. Earlier turns stay in the context with
their [THINK] traces, as the model card recommends for multi-turn use.
Without --prompt it reads one message per line from standard input: /reset starts over, /exit (or end of
input) quits.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

import torch
from transformers.generation.streamers import BaseStreamer

from contract.errors import UserError
from contract.prompt import check_rendered_prompt, system_prompt_for
from contract.reasoning import Verdict, validate_token_ids
from contract.tokens import EOS_ID, PAD_ID, THINK_CLOSE_ID, THINK_OPEN_ID
from train.config import DEFAULT_MODEL_PATH
from train.device import resolve_device
from train.export import VLM_DECODER
from train.pretrained import load_tokenizer
from train.tools.generation import adapter_lineage, load_for_inference, sampling_settings

HEADINGS = {"reasoning": "── reasoning ──", "answer": "── answer ──"}


class TurnPrinter(BaseStreamer):
    """model.generate's streamer: prints one assistant turn as its tokens arrive, the [THINK] block under one
    heading and the answer under another, and keeps the generated ids for the contract check.

    The structure tokens ([THINK] first, the first [/THINK], </s>) switch headings and are not printed; any
    other control token is printed as text, where the contract check then names it.
    """

    def __init__(self, tokenizer, out: TextIO, color: bool = False):
        self.tokenizer, self.out, self.color = tokenizer, out, color
        self.ids: list[int] = []
        self.section: str | None = None  # None before the first token, then "reasoning", "answer", "done"
        self._pending: list[int] = []    # this section's ids
        self._shown = ""                 # this section's text printed so far
        self._prompt_skipped = self._ended = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_skipped:  # generate() hands over the prompt first
            self._prompt_skipped = True
            return
        for token in value.reshape(-1).tolist():
            self._token(token)

    def end(self) -> None:
        """Called by generate() when the turn is over (and by Chat.ask, in case it was not)."""
        if self._ended:
            return
        self._ended = True
        self._show(final=True)
        self._style("")
        self.out.write("\n")
        self.out.flush()

    def _token(self, token: int) -> None:
        self.ids.append(token)
        if self.section == "done":
            return
        if self.section is None:
            self._open("reasoning" if token == THINK_OPEN_ID else "answer")
            if token == THINK_OPEN_ID:
                return
        elif self.section == "reasoning" and token == THINK_CLOSE_ID:
            self._show(final=True)
            self._open("answer")
            return
        if token == EOS_ID:
            self._show(final=True)
            self.section = "done"
            return
        self._pending.append(token)
        self._show()

    def _open(self, section: str) -> None:
        self._style("")
        if self.section is not None:
            self.out.write("\n")
        self.out.write(self._paint(HEADINGS[section], "1") + "\n")
        self._style("2" if section == "reasoning" else "")
        self.section, self._pending, self._shown = section, [], ""

    def _show(self, final: bool = False) -> None:
        text = self.tokenizer.decode(self._pending, skip_special_tokens=False)
        if not final and text.endswith("\ufffd"):
            return  # the token ends inside a multi-byte character: wait for the rest of it
        self.out.write(text[len(self._shown):])
        self.out.flush()
        self._shown = text

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def _style(self, code: str) -> None:
        if self.color:
            self.out.write(f"\033[0m\033[{code}m" if code else "\033[0m")


class Chat:
    """A conversation with the contract's system prompt; ask() generates, streams and checks one turn."""

    def __init__(self, model, tokenizer, template: str, system_prompt: str, device: torch.device,
                 generate_kwargs: dict, out: TextIO, color: bool = False):
        self.model, self.tokenizer, self.template, self.system_prompt = model, tokenizer, template, system_prompt
        self.device, self.generate_kwargs, self.out, self.color = device, generate_kwargs, out, color
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}]

    def ask(self, text: str) -> Verdict:
        messages = self.messages + [{"role": "user", "content": text}]
        rendered = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False)
        if codes := check_rendered_prompt(rendered, self.system_prompt):
            raise UserError(f"chat_template.jinja does not render the contract's system prompt first ({', '.join(codes)})")
        ids = self.tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        printer = TurnPrinter(self.tokenizer, self.out, self.color)
        with torch.no_grad():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=printer,
                                eos_token_id=EOS_ID, pad_token_id=PAD_ID, **self.generate_kwargs)
        printer.end()
        verdict = validate_token_ids(printer.ids, self.tokenizer)
        if not verdict.ok:
            self.out.write(f"!! reasoning-contract violation: {', '.join(verdict.codes)}\n")
        # The turn goes into the history as generated ([THINK]...[/THINK]answer, as the training data has it);
        # the template adds the </s>.
        body = printer.ids[:-1] if printer.ids[-1:] == [EOS_ID] else printer.ids
        self.messages = messages + [{"role": "assistant",
                                     "content": self.tokenizer.decode(body, skip_special_tokens=False)}]
        return verdict


def generation_settings(model_path: Path, greedy: bool, max_new_tokens: int) -> dict:
    """The model's recommended sampling (generation.sampling_settings); greedy decoding under --greedy."""
    decoding = {"do_sample": False} if greedy else sampling_settings(model_path)
    return {"max_new_tokens": max_new_tokens} | decoding


def check_adapter(path: Path) -> None:
    """A training run's adapter, under the text model's names: chat loads the text model, on which an adapter
    under the VLM's names (an exported vlm_adapter/) would find no module and change nothing."""
    from safetensors import safe_open

    weights = path / "adapter_model.safetensors"
    if not (path / "adapter_config.json").is_file() or not weights.is_file():
        raise UserError(f"--adapter {path}: no adapter_config.json / adapter_model.safetensors there; pass a "
                        "training run's output folder")
    with safe_open(str(weights), framework="pt") as f:
        if any(VLM_DECODER in key for key in f.keys()):
            raise UserError(f"--adapter {path}: an adapter under the VLM's module names (an exported vlm_adapter/); "
                            "pass the training run's folder, or the merged export as --model-path")


def interactive(chat: Chat, inp: TextIO, out: TextIO) -> None:
    out.write("One message per line; /reset starts over, /exit quits.\n")
    while True:
        out.write("\nyou> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return
        text = line.strip()
        if not inp.isatty():
            out.write(text + "\n")  # piped input: echo it, so the transcript shows what was asked
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.reset()
            out.write("(conversation cleared)\n")
        elif text:
            chat.ask(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run.sh chat", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model folder: the base, or a merged export (default: the "
                    f"adapter's base model, else {DEFAULT_MODEL_PATH})")
    ap.add_argument("--adapter", default=None, metavar="RUN_DIR", help="a training run's folder; its lineage "
                    "(--base-adapter) is merged in first, as the run trained")
    ap.add_argument("--prompt", default=None, help="ask this one message, print the answer and exit")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of the recommended sampling "
                    "(for checks that must give the same answer every time)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    a = ap.parse_args(argv)
    out = sys.stdout
    try:
        if a.adapter is not None:
            check_adapter(Path(a.adapter))
        model_path = Path(a.model_path or (adapter_lineage(a.adapter).get("model_path") if a.adapter else None)
                          or DEFAULT_MODEL_PATH)
        template_path = model_path / "chat_template.jinja"
        if not template_path.is_file():
            raise UserError(f"{template_path}: missing; chat renders with the model folder's own template")
        settings = generation_settings(model_path, a.greedy, a.max_new_tokens)
        device = resolve_device(a.device)
        tokenizer = load_tokenizer(model_path)
        system_prompt = system_prompt_for(model_path)
        model = load_for_inference(model_path, a.adapter, device)
        torch.manual_seed(a.seed)
        color = out.isatty() and "NO_COLOR" not in os.environ
        decoding = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "max_new_tokens")
        print(f"chat: {model_path}{f' + {a.adapter}' if a.adapter else ''} on {device}; {decoding}; "
              f"system prompt: {model_path / 'SYSTEM_PROMPT.txt'} + the C64 specialization", file=sys.stderr)
        chat = Chat(model, tokenizer, template_path.read_text(encoding="utf-8"), system_prompt, device, settings,
                    out, color)
        if a.prompt is not None:
            chat.ask(a.prompt)
        else:
            interactive(chat, sys.stdin, out)
    except UserError as e:
        print(f"chat: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
