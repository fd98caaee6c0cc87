"""./run.sh chat: rendering with the contract's system prompt, streaming, reasoning and answer apart, the contract flag."""
from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from contract.prompt import system_prompt_for
from contract.tokens import EOS_ID, THINK_CLOSE_ID, THINK_OPEN_ID
from train.tools.chat import HEADINGS, Chat, TurnPrinter, generation_settings
from train.tools.chat import main as chat_main


class Recorder(io.StringIO):
    """Keeps what had been written at each flush, to see text arrive while the turn is still generating."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_turn_printer_streams_reasoning_and_answer_under_their_headings(tiny_tokenizer):
    reasoning, answer = "The border colour register is 53280 → POKE it.", "POKE 53280,0"
    r_ids = tiny_tokenizer.encode(reasoning, add_special_tokens=False)
    a_ids = tiny_tokenizer.encode(answer, add_special_tokens=False)
    out = Recorder()
    printer = TurnPrinter(tiny_tokenizer, out)
    printer.put(torch.tensor([[1, 17, 18, 3, 4]]))  # generate() hands over the prompt first: not printed
    grew = []
    for token in [THINK_OPEN_ID, *r_ids, THINK_CLOSE_ID, *a_ids, EOS_ID]:
        before = len(out.getvalue())
        printer.put(torch.tensor([token]))
        grew.append(len(out.getvalue()) > before)
    printer.end()
    assert out.getvalue() == f"{HEADINGS['reasoning']}\n{reasoning}\n{HEADINGS['answer']}\n{answer}\n"
    # Streamed: most tokens show up at once (a token ending inside a multi-byte character waits for the next),
    # and no half character is ever shown.
    assert sum(grew) > (len(r_ids) + len(a_ids)) // 2
    assert not any("\ufffd" in text for text in out.flushed)
    assert printer.ids == [THINK_OPEN_ID, *r_ids, THINK_CLOSE_ID, *a_ids, EOS_ID]


@pytest.fixture(scope="module")
def adapted(sft_on_dapt, tiny_model_dir):
    from train.pretrained import load_tokenizer
    from train.tools.generation import load_for_inference
    _, sft = sft_on_dapt
    return load_for_inference(tiny_model_dir, sft, torch.device("cpu")), load_tokenizer(tiny_model_dir)


def forcing(sequence: list[int], prompt_len: int):
    """prefix_allowed_tokens_fn that makes generate() emit `sequence`: a turn of known shape from the real model."""
    return lambda _batch, ids: [sequence[min(len(ids) - prompt_len, len(sequence) - 1)]]


def test_chat_checks_each_turn_and_keeps_the_conversation(adapted, tiny_model_dir):
    model, tok = adapted
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    system = system_prompt_for(tiny_model_dir)
    out = io.StringIO()
    chat = Chat(model, tok, template, system, torch.device("cpu"), {"max_new_tokens": 40, "do_sample": False}, out)
    rendered = tok.apply_chat_template(chat.messages + [{"role": "user", "content": "Border colour?"}],
                                       chat_template=template, tokenize=False)
    assert rendered.startswith(f"<s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]Border colour?[/INST]")
    prompt_len = len(tok(rendered, add_special_tokens=False)["input_ids"])

    good = [THINK_OPEN_ID, *tok.encode("Register 53280.", add_special_tokens=False), THINK_CLOSE_ID,
            *tok.encode("POKE 53280,0", add_special_tokens=False), EOS_ID]
    chat.generate_kwargs["prefix_allowed_tokens_fn"] = forcing(good, prompt_len)
    assert chat.ask("Border colour?").ok
    text = out.getvalue()
    assert f"{HEADINGS['reasoning']}\nRegister 53280.\n{HEADINGS['answer']}\nPOKE 53280,0\n" in text
    assert "violation" not in text
    assert chat.messages[-1] == {"role": "assistant", "content": "[THINK]Register 53280.[/THINK]POKE 53280,0"}

    # The second turn's prompt carries the first exchange; a turn without [THINK] is flagged.
    follow_up = tok.apply_chat_template(chat.messages + [{"role": "user", "content": "And the background?"}],
                                        chat_template=template, tokenize=False)
    assert "[INST]Border colour?[/INST][THINK]Register 53280.[/THINK]POKE 53280,0</s>[INST]And the" in follow_up
    bad = [*tok.encode("POKE 53281,0", add_special_tokens=False), EOS_ID]
    chat.generate_kwargs["prefix_allowed_tokens_fn"] = forcing(bad, len(tok(follow_up, add_special_tokens=False)["input_ids"]))
    verdict = chat.ask("And the background?")
    assert verdict.codes == ("missing_think_open",)
    assert out.getvalue().endswith(f"{HEADINGS['answer']}\nPOKE 53281,0\n!! reasoning-contract violation: "
                                   "missing_think_open\n")
    assert len(chat.messages) == 5
    chat.reset()
    assert chat.messages == [{"role": "system", "content": system}]


def test_one_shot_prompt_with_an_adapter(sft_on_dapt, tiny_model_dir, capsys):
    _, sft = sft_on_dapt
    # --model-path defaults to the base the adapter was trained on.
    assert chat_main(["--adapter", str(sft), "--prompt", "How do I clear the screen?", "--max-new-tokens", "6",
                      "--greedy", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"chat: {tiny_model_dir} + {sft} on cpu; do_sample=False" in captured.err
    # Six greedy tokens of a barely trained model never make a whole turn: it is shown, and flagged.
    assert any(h in captured.out for h in HEADINGS.values())
    assert "!! reasoning-contract violation:" in captured.out


def test_interactive_reads_messages_until_exit(sft_on_dapt, tiny_model_dir, capsys, monkeypatch):
    _, sft = sft_on_dapt
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n/reset\n\nsecond question\n/exit\nnever asked\n"))
    assert chat_main(["--model-path", str(tiny_model_dir), "--adapter", str(sft), "--max-new-tokens", "4",
                      "--greedy", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "you> first question\n" in out and "you> /reset\n(conversation cleared)" in out
    assert "you> second question\n" in out and "never asked" not in out
    assert out.count("!! reasoning-contract violation:") == 2  # two turns generated, each checked


def test_an_exported_vlm_adapter_is_refused_rather_than_loaded_as_a_no_op(sft_on_dapt, tmp_path, capsys):
    from train.export import export_vlm_adapter
    _, sft = sft_on_dapt
    exported = export_vlm_adapter(sft, tmp_path)
    assert chat_main(["--adapter", str(exported), "--prompt", "hi", "--device", "cpu"]) == 1
    assert "under the VLM's module names" in capsys.readouterr().err


def test_chat_samples_as_recommended_unless_greedy(tiny_model_dir, tmp_path, capsys):
    from train.tools.generation import RECOMMENDED_SAMPLING
    assert generation_settings(tiny_model_dir, True, 7) == {"max_new_tokens": 7, "do_sample": False}
    sampled = generation_settings(tiny_model_dir, False, 7)
    assert sampled["do_sample"] is True and sampled["max_new_tokens"] == 7
    configured = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert {k: sampled[k] for k in RECOMMENDED_SAMPLING} == {k: configured.get(k, v) for k, v in RECOMMENDED_SAMPLING.items()}
    # Without generation_config.json: the card's recommendation, not greedy.
    folder = tmp_path / "no-generation-config"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "generation_config.json":
            (folder / f.name).symlink_to(f)
    assert {k: generation_settings(folder, False, 7)[k] for k in RECOMMENDED_SAMPLING} == RECOMMENDED_SAMPLING
    # A missing template is reported with its path, exit 1.
    folder = tmp_path / "no-template"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "chat_template.jinja":
            (folder / f.name).symlink_to(f)
    assert chat_main(["--model-path", str(folder), "--prompt", "hi", "--device", "cpu"]) == 1
    assert f"{folder / 'chat_template.jinja'}: missing" in capsys.readouterr().err
