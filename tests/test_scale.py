"""Issue 18, items 1 and 2: the 8B-shape checkpoint, and the seed's flow on it at reduced depth with the real
vocabulary (131,072) and the real hidden size and heads: load, DAPT, interruption and resume, SFT on top of
DAPT, vlm_adapter export, each measured against the memory plan (train/tools/scale_check.py)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B, VISION_CONFIG_8B

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_width(tmp_path_factory) -> tuple[Path, int]:
    """One text layer of the 8B (and one vision layer), in 1.2 GB shards, built in its own process."""
    out = tmp_path_factory.mktemp("r8b") / "model"
    proc = subprocess.Popen([sys.executable, "-m", "train.tools.random_model", "--shape", "8b", "--layers", "1",
                             "--vision-layers", "1", "--max-shard-gb", "1.2", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output[-3000:]
    return out, (usage.ru_maxrss - import_rss()) * 1024


def import_rss() -> int:
    """Peak RSS (KiB) of a process that only imports the builder: the interpreter and torch, which differ by host."""
    proc = subprocess.Popen([sys.executable, "-c", "import train.tools.random_model, safetensors.torch"], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss


def layout(keys) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}


@pytest.mark.slow
def test_the_8b_shape_folder_has_the_released_layout(real_width, tiny_model_dir):
    from safetensors import safe_open

    from train.pretrained import load_tokenizer
    folder, build_peak = real_width
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "mistral3" and cfg["architectures"] == ["Mistral3ForConditionalGeneration"]
    text, vision = cfg["text_config"], cfg["vision_config"]
    for key, value in (TEXT_CONFIG_8B | {"num_hidden_layers": 1}).items():
        assert text[key] == value, key
    assert text["model_type"] == "ministral3" and text["rope_parameters"] == ROPE_PARAMETERS
    for key, value in (VISION_CONFIG_8B | {"num_hidden_layers": 1}).items():
        assert vision[key] == value, key

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert len(files) >= 3
    keys, sizes = [], 0
    for name in files:
        with safe_open(str(folder / name), "pt") as f:
            for k in f.keys():
                assert index["weight_map"][k] == name
                keys.append(k)
                sizes += math.prod(f.get_slice(k).get_shape()) * 2
                assert str(f.get_slice(k).get_dtype()) == "BF16"
    assert sizes == index["metadata"]["total_size"] and len(keys) == len(index["weight_map"])
    # The names transformers 5 writes for Mistral3ForConditionalGeneration (the tiny model is written by
    # save_pretrained itself), layer numbers aside.
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        assert layout(keys) == layout(f.keys())

    for name in ("tokenizer.json", "chat_template.jinja", "SYSTEM_PROMPT.txt", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert len(load_tokenizer(folder)) <= TEXT_CONFIG_8B["vocab_size"]  # control ids asserted by the loader
    # Written shard by shard: above what importing torch costs, the peak is about the largest shard, well
    # below the whole model (which is at least twice that here, so the bound can tell the two apart).
    largest = max((folder / name).stat().st_size for name in files)
    assert 2 * largest <= index["metadata"]["total_size"]
    assert build_peak < 1.3 * largest, (build_peak, largest, index["metadata"]["total_size"])


def test_random_weights_depend_only_on_seed_and_position():
    from train.tools.random_model import random_tensor
    a = random_tensor("language_model.model.layers.0.mlp.up_proj.weight", torch.Size([64, 32]), 0, 5)
    assert torch.equal(a, random_tensor("language_model.model.layers.0.mlp.up_proj.weight", torch.Size([64, 32]), 0, 5))
    assert not torch.equal(a, random_tensor("language_model.model.layers.0.mlp.up_proj.weight", torch.Size([64, 32]), 1, 5))
    assert a.dtype == torch.bfloat16 and 0.01 < a.float().std().item() < 0.03
    assert torch.equal(random_tensor("language_model.model.norm.weight", torch.Size([8]), 0, 1),
                       torch.ones(8, dtype=torch.bfloat16))


@pytest.mark.slow
def test_the_flow_runs_at_real_width_and_the_plan_predicts_its_peak(real_width, tmp_path):
    from train.tools.scale_check import main as scale_check
    folder, _ = real_width
    work = tmp_path / "work"
    rc = scale_check(["--model-path", str(folder), "--work-dir", str(work), "--dapt-lengths", "64",
                      "--sft-length", "1024", "--sft-max", "12", "--skip", "merge"])
    report = json.loads((work / "scale_check.json").read_text())
    steps = {r["step"]: r for r in report["steps"]}
    assert rc == 0 and list(steps) == ["data", "load", "dapt-64", "resume", "sft", "export"], report
    assert all(r["rc"] == 0 for r in steps.values())

    dapt, sft = work / "runs" / "dapt-64", work / "runs" / "sft"
    assert "stopping after step 1" in (dapt / "train.log").read_text()
    assert "resumed from" in (dapt / "train.log").read_text()
    for run in (dapt, sft):
        args = json.loads((run / "training_args.json").read_text())
        assert args["finished"] and args["resolved"]["trainable_parameters"] > 0
        assert (run / "vlm_adapter" / "adapter_model.safetensors").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-000002"
    assert json.loads((sft / "training_args.json").read_text())["lineage"]["base_adapter"] == str(dapt.resolve())
    # The memory plan against each training process's own peak RSS (the plan's runtime term is this process's
    # RSS when it plans; the rest comes from the shapes).
    # In fp32 (a CPU without native bf16) the peak is the load, which widens the bf16 shards (memory_plan.load_peak).
    from train.tools.scale_check import CPU_PRECISION
    tolerance = 0.15 if CPU_PRECISION == "bf16" else 0.05
    for name in ("dapt-64", "resume", "sft"):
        assert abs(steps[name]["plan_error"]) <= tolerance, steps[name]
    # Loading reads the language model only, and lazily: far below the folder's size.
    assert steps["load"]["peak_rss_MiB"] * 2**20 < sum(f.stat().st_size for f in folder.glob("*.safetensors"))
