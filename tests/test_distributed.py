"""Issue 7: torchrun with 2 CPU processes (gloo) against 1 process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.main import main

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def args(model_dir, data_dir, out, accum, *extra):
    return ["--phase", "dapt", "--model-path", str(model_dir), "--dapt-dir", str(data_dir), "--output-dir", str(out),
            "--max-length", "48", "--micro-batch-size", "2", "--grad-accum", str(accum), "--precision", "fp32",
            "--lr", "3e-3", "--lora-dropout", "0", "--eval-interval", "100", "--save-interval", "2",
            "--max-steps", "5", "--seed", "3", "--device", "cpu", *extra]


def cpu_env() -> dict:
    """The environment of a multi-process CPU test: gloo whatever GPUs the machine has, one thread each."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")


def torchrun(argv, tmp_path):
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "train/main.py"), *argv],
                          capture_output=True, text=True, env=cpu_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"}


@pytest.fixture(scope="module")
def small_dapt(tmp_path_factory):
    d = tmp_path_factory.mktemp("dapt2")
    text = (ROOT / "data/raw/cc65__cpus.txt").read_text(encoding="utf-8")
    for split, n in (("train", 14), ("validation", 2)):
        with (d / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                off = (i + (100 if split == "validation" else 0)) * 300
                f.write(json.dumps({"id": f"{split}-{i}", "source": "t", "text": text[off:off + 300]}) + "\n")
    return d


@pytest.mark.slow
def test_two_processes_match_one_and_resume_exactly(tiny_text_model_dir, small_dapt, tmp_path):
    one = tmp_path / "one"
    assert main(args(tiny_text_model_dir, small_dapt, one, 4)) == 0
    two = tmp_path / "two"
    torchrun(args(tiny_text_model_dir, small_dapt, two, 2), tmp_path)

    # Same global batch (2 processes x 2 micro-batches = 1 x 4): the same rows per step, the same token
    # normalisation; only the order of float additions differs (all-reduce of two partial sums).
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() == set(range(1, 6))
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-5 * abs(l1[s]), (s, l1[s], l2[s])
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    # Adam divides by sqrt(v): for near-zero gradient entries a 1e-7 relative difference in the summed
    # gradient can move single elements by a visible fraction of one lr-sized step, so the criterion is on
    # whole tensors: each adapter tensor agrees to 0.1% in Frobenius norm. lora_B starts at zero, so for it
    # this is 0.1% of everything training learned. Measured: 2.3e-4 (lora_B), 5e-5 (lora_A) after 5 steps.
    for k in a:
        rel = ((a[k] - b[k]).norm() / a[k].norm()).item()
        assert rel < 1e-3, (k, rel)
    log = (two / "train.log").read_text()
    assert "2 process(es)" in log

    # Resume under 2 processes: interrupted after step 3, resumed from the step-2 checkpoint -> bitwise.
    resumed = tmp_path / "resumed"
    torchrun(args(tiny_text_model_dir, small_dapt, resumed, 2, "--stop-after-steps", "3"), tmp_path)
    torchrun(args(tiny_text_model_dir, small_dapt, resumed, 2, "--resume"), tmp_path)
    c = load_file(str(resumed / "adapter_model.safetensors"))
    for k in b:
        assert torch.equal(b[k], c[k]), k
    rng = json.loads(next((resumed / "checkpoints").glob("step-*/rng.json")).read_text())
    assert len(rng) == 2, "every rank's RNG state is in the checkpoint"


@pytest.mark.parametrize("device, local_rank, refused", [("cuda:1", "0", True), ("cuda:1", "1", False),
                                                         ("cuda", "1", False), ("auto", "1", False)])
def test_an_explicit_gpu_index_must_be_the_process_local_rank(monkeypatch, device, local_rank, refused):
    """Under torchrun every process gets the same --device; a fixed index would put them all on one GPU while
    the process group binds each to cuda:LOCAL_RANK."""
    from train.config import ConfigError, parse_args, validate_args
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    cfg = parse_args(["--phase", "dapt", "--device", device])
    if refused:
        with pytest.raises(ConfigError, match=r"--device cuda:1 with WORLD_SIZE=2: this process is LOCAL_RANK=0 "
                                              r"and must use cuda:0"):
            validate_args(cfg, cuda_available=True)
    else:
        validate_args(cfg, cuda_available=True)
