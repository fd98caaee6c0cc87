"""Shared fixtures: tiny checkpoints are built once per test session into a temp folder (never committed)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The full VLM layout (Mistral3ForConditionalGeneration + tiny Pixtral tower)."""
    from train.tiny_model import build
    return build(tmp_path_factory.mktemp("tiny-vlm"), text_only=False, seed=0)


@pytest.fixture(scope="session")
def tiny_text_model_dir(tmp_path_factory) -> Path:
    """The text-only layout (Ministral3ForCausalLM)."""
    from train.tiny_model import build
    return build(tmp_path_factory.mktemp("tiny-text"), text_only=True, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from train.model_loading import load_tokenizer
    return load_tokenizer(tiny_model_dir)
