"""Shared fixtures: tiny checkpoints are built once per test session into a temp folder (never committed)."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda skip, saying why, where torch sees no GPU."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none here)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The full VLM layout (Mistral3ForConditionalGeneration + tiny Pixtral tower)."""
    from train.tools.tiny_model import build
    return build(tmp_path_factory.mktemp("tiny-vlm"), text_only=False, seed=0)


@pytest.fixture(scope="session")
def tiny_text_model_dir(tmp_path_factory) -> Path:
    """The text-only layout (Ministral3ForCausalLM)."""
    from train.tools.tiny_model import build
    return build(tmp_path_factory.mktemp("tiny-text"), text_only=True, seed=0)


# The stand-in's recipe scaled down to seconds: a small generic corpus, a 4-prompt self-check with an 8-token
# budget (with --pretrain-steps 2 the "pretrained" model is still nearly random; the tests check the build, the
# layout and the cache, not what it learned).
FAST_STAND_IN = {"STAND_IN_CORPUS": dict(conversations=96, prose=8, validation_conversations=8, validation_prose=2),
                 "SELF_CHECK_PROMPTS": 4, "SELF_CHECK_BUDGET": 8}


@contextlib.contextmanager
def fast_stand_in():
    import train.tools.tiny_model as tm
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAST_STAND_IN.items():
            mp.setattr(tm, name, value)
        # Compiling pays off over hundreds of steps, not over the two the tests take.
        mp.setattr(tm, "STAND_IN_COMMON", [f for f in tm.STAND_IN_COMMON if f != "--compile"])
        yield


@pytest.fixture(scope="session")
def stand_in_dir(tmp_path_factory) -> Path:
    """A stand-in built by `./run.sh tiny-model` itself (random checkpoint -> train.main pretraining -> the
    released layout), with the fast recipe above and 2 pretraining steps."""
    from train.tools.tiny_model import main
    out = tmp_path_factory.mktemp("models") / "tiny-ministral3"
    with fast_stand_in():
        assert main(["--out", str(out), "--pretrain-steps", "2"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from train.pretrained import load_tokenizer
    return load_tokenizer(tiny_model_dir)


def lora_model(model_dir, phase: str = "sft", seed: int = 0, **overrides):
    """A fp32 LoRA model (dropout-free unless lora_dropout is overridden) whose B matrices are non-zero, so
    every adapter tensor gets a gradient (peft initialises B to zero, which would leave A's gradient
    identically zero)."""
    import torch

    from train.config import TrainConfig
    from train.lora_model import build_model
    overrides.setdefault("lora_dropout", 0.0)
    cfg = TrainConfig(phase=phase, model_path=str(model_dir), precision="fp32", seed=seed, **overrides).resolve()
    model = build_model(cfg, torch.device("cpu"), lambda _: None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


@pytest.fixture(scope="session")
def sft_on_dapt(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(DAPT run, SFT run trained on top of it) on the tiny VLM: one CPU step each at a high learning rate, so
    both adapters visibly change the logits. Different ranks and targets, as a lineage may have."""
    from data.build import main as data_main
    from train.main import main as train_main
    root = tmp_path_factory.mktemp("lineage")
    assert data_main(["--raw-dir", str(PROJECT_ROOT / "data/raw"), "--out-dir", str(root / "processed"),
                      "--model-path", str(tiny_model_dir), "--sft-max", "24"]) == 0
    dapt_train = root / "processed/dapt/train.jsonl"  # two steps need a few documents, not the whole corpus
    dapt_train.write_text("".join(dapt_train.read_text().splitlines(keepends=True)[:40]))
    common = ["--model-path", str(tiny_model_dir), "--precision", "fp32", "--device", "cpu", "--grad-accum", "1",
              "--lr", "1e-2", "--max-steps", "1", "--eval-max-batches", "1", "--lora-dropout", "0"]
    dapt, sft = root / "dapt", root / "sft"
    assert train_main(["--phase", "dapt", "--dapt-dir", str(root / "processed/dapt"), "--output-dir", str(dapt),
                       "--max-length", "128", "--micro-batch-size", "2", "--lora-r", "8", "--lora-alpha", "16"]
                      + common) == 0
    assert train_main(["--phase", "sft", "--sft-dir", str(root / "processed/sft"), "--output-dir", str(sft),
                       "--base-adapter", str(dapt), "--max-length", "1024", "--micro-batch-size", "1",
                       "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj,down_proj",
                       "--chat-template-path", str(PROJECT_ROOT / "templates/mistral3_chat_template_assistant_mask.jinja")]
                      + common) == 0
    return dapt, sft


def write_dapt_data(folder: Path, n_train: int = 6, chars: int = 900) -> Path:
    """A small DAPT set in `folder`: n_train training documents and one validation document of `chars`
    characters each, cut from the shipped sample corpus (redistributable text)."""
    import json
    folder.mkdir(parents=True, exist_ok=True)
    text = (PROJECT_ROOT / "data/raw/cc65__cpus.txt").read_text(encoding="utf-8")
    for split, n in (("train", n_train), ("validation", 1)):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}{i}", "source": "t", "text": text[i * chars:(i + 1) * chars]}) + "\n"
            for i in range(n)))
    return folder


def free_port() -> int:
    """A localhost TCP port nothing listens on (torchrun's rendezvous, an engine's server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
