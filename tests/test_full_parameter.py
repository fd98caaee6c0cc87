"""--no-use-lora: the loop trains every weight of the text model (how the stand-in is pretrained), through the
same checkpoint/resume, NaN guard and metrics paths as LoRA, and writes a whole model folder at the end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.main import main
from train.pretrained import load_text_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def text_docs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    words = "the quick brown fox jumps over the lazy dog while seven cats count to nine".split()
    for split, n in (("train", 16), ("validation", 4)):
        with (d / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                text = " ".join(words[(i + j) % len(words)] for j in range(60))
                f.write(json.dumps({"id": f"{split}-{i}", "text": text}) + "\n")
    return d


def full_args(model_dir, data_dir, out, *extra) -> list[str]:
    return ["--phase", "dapt", "--no-use-lora", "--model-path", str(model_dir), "--dapt-dir", str(data_dir),
            "--output-dir", str(out), "--max-length", "64", "--micro-batch-size", "2", "--grad-accum", "2",
            "--precision", "fp32", "--lr", "1e-3", "--eval-interval", "100", "--save-interval", "2", "--seed", "3",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, text_docs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full-param")
    assert main(full_args(tiny_model_dir, text_docs, out, "--max-steps", "6", "--debug-nan-steps", "2")) == 0
    return out


def test_every_weight_trains_and_the_run_writes_a_model_folder(full_run, tiny_model_dir):
    assert not (full_run / "adapter_model.safetensors").exists() and not (full_run / "vlm_adapter").exists()
    trained = load_text_model(full_run, dtype=torch.float32)
    base = load_text_model(tiny_model_dir, dtype=torch.float32)
    saved = load_file(str(full_run / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())
    base_state = base.state_dict()
    unchanged = [n for n, t in trained.state_dict().items() if torch.equal(t, base_state[n])]
    assert not unchanged, unchanged[:5]
    args = json.loads((full_run / "training_args.json").read_text())
    assert args["use_lora"] is False and args["exports"] == {}
    n_total = sum(t.numel() for t in base_state.values())
    assert args["resolved"]["trainable_parameters"] == n_total
    assert "full-model (--no-use-lora) tensors" in (full_run / "train.log").read_text()


def test_the_nan_guard_skips_a_full_parameter_step(full_run):
    records = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 6 and train[-1]["skipped_steps"] == 1
    assert (full_run / "forensics" / "step-000002").is_dir()


def test_full_parameter_resume_is_bitwise_identical(full_run, tiny_model_dir, text_docs, tmp_path):
    out = tmp_path / "interrupted"
    common = ("--max-steps", "6", "--debug-nan-steps", "2")
    assert main(full_args(tiny_model_dir, text_docs, out, *common, "--stop-after-steps", "3")) == 0
    assert main(full_args(tiny_model_dir, text_docs, out, *common, "--resume")) == 0
    a, b = load_file(str(full_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_lora_checkpoint_does_not_resume_a_full_parameter_run(tiny_model_dir, text_docs, tmp_path, capsys):
    out = tmp_path / "mixed"
    lora = [a for a in full_args(tiny_model_dir, text_docs, out, "--max-steps", "4", "--stop-after-steps", "2")
            if a != "--no-use-lora"]
    assert main(lora) == 0
    assert main(full_args(tiny_model_dir, text_docs, out, "--max-steps", "4", "--resume")) == 1
    assert "use_lora=True then, False now" in capsys.readouterr().err
