"""Issue 18, item 3: the memory plan predicts a run's peak before loading and picks a setting that fits."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_dapt_data
from train import memory_plan
from train.batching import Row, collate
from train.config import TrainConfig
from train.device import autocast
from train.main import main
from train.memory_plan import GiB, HEADROOM, MemoryPlanError, estimate, plan
from train.pretrained import ROPE_PARAMETERS, TEXT_CONFIG_8B

ROOT = Path(__file__).resolve().parent.parent
CPU, CUDA = torch.device("cpu"), torch.device("cuda")   # a device object needs no GPU; nothing runs on it here
SMALL = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=768,
             vocab_size=4096)


def text_config(**shape):
    from transformers import Ministral3Config
    return Ministral3Config(**(TEXT_CONFIG_8B | shape), rope_parameters=dict(ROPE_PARAMETERS))


def recipe(**kw) -> TrainConfig:
    """The seed's SFT recipe on a GPU: micro-batch 2 x 2048, LoRA r16 on all projections, bf16."""
    return dataclasses.replace(TrainConfig(phase="sft", device="cuda").resolve(), **kw)


def saved_bytes(layers: int, cfg: TrainConfig, width: int, prefix: int = 0) -> int:
    """Bytes autograd keeps for backward in one forward of the labels-only loss (parameters excluded); with
    `prefix`, the rows share their first `prefix` tokens (unlabelled) and collate with --share-prefix."""
    from train.attention import set_attention
    from train.loss import labels_only_loss_sum
    from train.lora_model import attach_lora, causal_lm
    from train.tools.bench import random_text_model

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    base = random_text_model(SMALL | {"num_hidden_layers": layers}, dtype, CPU)
    set_attention(base, cfg, CPU)
    model = attach_lora(base, cfg).train()
    g = torch.Generator().manual_seed(0)
    common = torch.randint(1000, 4096, (prefix,), generator=g).tolist()
    rows = [Row(f"r{i}", ids := common + torch.randint(1000, 4096, (width - prefix,), generator=g).tolist(),
                [-100] * prefix + ids[prefix:]) for i in range(cfg.micro_batch_size)]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def keep(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    batch = collate(rows, share_prefix=bool(prefix))
    assert batch["shared_prefix"] == max(0, prefix - 1)   # the last prefix position predicts a label
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast(CPU, cfg.precision):
        labels_only_loss_sum(causal_lm(model), batch, cfg.loss_chunk_size)
    return sum(storages.values())


@pytest.mark.parametrize("precision, attention, dropout, ckpt", [
    ("bf16", "sdpa", 0.05, False),
    ("bf16", "eager", 0.05, False),
    ("fp32", "sdpa", 0.0, False),
    ("fp32", "eager", 0.1, False),
    ("bf16", "sdpa", 0.05, True),
])
def test_activations_per_layer_match_what_autograd_keeps(precision, attention, dropout, ckpt):
    """The plan's per-layer activation bytes against the tensors autograd actually saves, per added layer."""
    width = 96
    cfg = TrainConfig(phase="dapt", precision=precision, attention=attention, lora_dropout=dropout,
                      micro_batch_size=2, max_length=width, gradient_checkpointing=ckpt).resolve()
    measured = saved_bytes(2, cfg, width) - saved_bytes(1, cfg, width)
    one_layer = estimate(text_config(**SMALL, num_hidden_layers=1), cfg, CPU, width=width, runtime=0)
    predicted = one_layer.parts["activations"]
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)


def test_shared_prefix_path_memory_is_counted_with_its_repeated_key_values(monkeypatch):
    """The shared-prefix SFT path (rows attend to the prefix's cache through an explicit mask, so SDPA gets K/V
    repeated to every head) against what autograd keeps: the plan may over-count the prefix rows it runs once,
    never under-count. One K/V head for four query heads and a short prefix make the repeat visible."""
    monkeypatch.setitem(SMALL, "num_key_value_heads", 1)
    width, prefix = 384, 17
    cfg = TrainConfig(phase="sft", precision="fp32", attention="sdpa", lora_dropout=0.0, micro_batch_size=2,
                      max_length=width, share_prefix=True, device="cpu").resolve()
    measured = saved_bytes(2, cfg, width, prefix) - saved_bytes(1, cfg, width, prefix)
    predicted = estimate(text_config(**SMALL, num_hidden_layers=1), cfg, CPU, width=width, runtime=0)
    assert measured <= predicted.parts["activations"] <= 1.1 * measured, (predicted.parts["activations"], measured)


def test_the_repeated_key_values_at_the_recipe_shape():
    """2 x 2048 tokens, 34 layers: K and V repeated from 8 to 32 heads add 2 x 24 x 128 bf16 values per token."""
    text = text_config()
    off, on = (estimate(text, recipe(share_prefix=sp), CUDA, width=2048, runtime=0).parts["activations"]
               for sp in (False, True))
    assert on - off == 34 * 2 * 2048 * 2 * 2 * (32 - 8) * 128
    assert 1.5 * GiB < on - off < 1.6 * GiB


def test_share_prefix_is_off_by_default_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainConfig(phase="sft").resolve().share_prefix is False
    assert TrainConfig(phase="sft", device="cuda:0").resolve().share_prefix is False
    assert TrainConfig(phase="sft", device="cpu").resolve().share_prefix is True
    assert TrainConfig(phase="sft", device="cuda", share_prefix=True).resolve().share_prefix is True  # asked for


def test_a_gpu_process_keeps_a_reserve_beyond_the_headroom():
    """What max_memory_allocated never counts (cuBLAS workspaces, fragmentation, NCCL buffers) is kept free:
    a run whose prediction fills the budget less the 5 % headroom does not fit on a GPU, and fits on a CPU."""
    text = text_config()
    cfg = recipe(gradient_checkpointing=True)
    peak = estimate(text, cfg, CUDA, width=2048, runtime=0).peak
    budget = str((peak + 2**20) / (1 - HEADROOM) / GiB)
    one = dataclasses.replace(cfg, memory_budget=budget)
    with pytest.raises(MemoryPlanError, match="1.0 GiB reserved"):
        plan(one, text, CUDA, width=2048, embed_rows=None, runtime=0)
    roomy = dataclasses.replace(cfg, memory_budget=str((peak + 1.1 * GiB) / (1 - HEADROOM) / GiB))
    assert plan(roomy, text, CUDA, width=2048, embed_rows=None, runtime=0).reserve == GiB
    with pytest.raises(MemoryPlanError, match="1.5 GiB reserved"):   # NCCL's buffers under torchrun
        plan(roomy, text, CUDA, width=2048, embed_rows=None, runtime=0, world_size=2)
    assert memory_plan.reserve_bytes(CPU, 2) == 0


def test_main_asks_for_expandable_cuda_segments_before_anything_allocates(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert main(["--phase", "dapt", "--memory-budget", "lots", "--output-dir", str(tmp_path / "o")]) == 2
    assert "expandable_segments:True" in __import__("os").environ["PYTORCH_ALLOC_CONF"]
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:256")   # the user's own setting stays
    main(["--phase", "dapt", "--memory-budget", "lots", "--output-dir", str(tmp_path / "o")])
    assert __import__("os").environ["PYTORCH_ALLOC_CONF"] == "max_split_size_mb:256"


def test_the_recipe_is_planned_under_20_gib_so_it_trains_on_a_24_gb_card():
    text = text_config()
    with_ckpt = estimate(text, recipe(gradient_checkpointing=True, share_prefix=False), CUDA, width=2048, runtime=0)
    assert with_ckpt.peak <= 20 * GiB, with_ckpt.describe()
    assert with_ckpt.parts["frozen_weights"] == memory_plan.text_param_count(text) * 2  # all of it, on a GPU
    without = estimate(text, recipe(), CUDA, width=2048, runtime=0)
    assert without.peak > 24 * GiB, without.describe()
    # --memory-budget auto on a 24 GiB card (what it has free after the CUDA context) picks checkpointing.
    chosen = plan(recipe(memory_budget="23.5"), text, CUDA, width=2048, embed_rows=None, runtime=0)
    assert chosen.changed == {"gradient_checkpointing": True}
    assert chosen.chosen.peak == with_ckpt.peak and len(chosen.considered) == 2


def test_the_plan_keeps_the_flags_when_they_fit_and_refuses_naming_what_would():
    text = text_config()
    cfg = TrainConfig(phase="dapt", memory_budget="auto").resolve()
    given = estimate(text, cfg, CPU, width=2048, runtime=GiB, embed_rows=20000)
    ckpt = estimate(text, dataclasses.replace(cfg, gradient_checkpointing=True), CPU, width=2048, runtime=GiB,
                    embed_rows=20000)
    assert ckpt.peak < given.peak

    def planned(budget_bytes: float):
        return plan(dataclasses.replace(cfg, memory_budget=str(budget_bytes / GiB)), text, CPU, width=2048,
                    embed_rows=20000, runtime=GiB)

    assert planned(given.peak / (1 - HEADROOM) + 2**20).changed == {}
    between = planned((ckpt.peak + given.peak) / 2 / (1 - HEADROOM))
    assert between.changed == {"gradient_checkpointing": True} and between.chosen.peak == ckpt.peak
    with pytest.raises(MemoryPlanError) as info:
        planned(ckpt.peak - 0.3 * GiB)
    message = str(info.value)
    assert "What would fit: --gradient-checkpointing --micro-batch-size 1 --max-length 1024" in message
    assert "--memory-budget off" in message
    with pytest.raises(MemoryPlanError, match="the frozen weights alone take"):
        planned(10 * GiB)
    # off: predicted and logged, never changed or refused.
    off = plan(dataclasses.replace(cfg, memory_budget="off"), text, CPU, width=2048, embed_rows=20000, runtime=GiB)
    assert off.changed == {} and off.chosen.peak == given.peak and off.budget is None


def test_cpu_counts_only_the_embedding_rows_the_data_reads():
    text = text_config()
    cfg = TrainConfig(phase="dapt").resolve()
    few, every = (estimate(text, cfg, CPU, width=1024, runtime=0, embed_rows=n).parts["frozen_weights"]
                  for n in (1000, None))
    assert every - few == (131072 - 1000) * 4096 * 2
    on_gpu = estimate(text, cfg, CUDA, width=1024, runtime=0, embed_rows=1000).parts["frozen_weights"]
    assert on_gpu == every


def test_loading_widened_weights_peaks_with_the_shard_being_read():
    """fp32 from bf16 shards on CPU: everything converted so far plus the mapped shard; no widening, no load peak.
    (tests/test_scale.py measures it at real width: the fp32 run's peak RSS is the load.)"""
    from train.memory_plan import load_peak
    M = 2**20
    shards = [(400 * M, 200 * M), (20 * M, 10 * M)]             # bf16 on disk
    # After the first shard 800 converted + its 400 mapped; after the second 840 + 20: the first is the peak.
    assert load_peak(shards, 4, 10 * M, CPU) == 10 * M + 800 * M + 400 * M
    assert load_peak(list(reversed(shards)), 4, 0, CPU) == 840 * M + 400 * M
    assert load_peak(shards, 2, 10 * M, CPU) == 0                # bf16 wanted: views of the mapped files
    assert load_peak(shards, 4, 10 * M, CUDA) == 0 and load_peak(None, 4, 0, CPU) == 0
    text = text_config()
    cfg = TrainConfig(phase="dapt", precision="fp32").resolve()
    e = estimate(text, cfg, CPU, width=64, runtime=GiB, shards=[(4 * GiB, 2 * GiB)] * 2)
    assert e.load_peak == GiB + 16 * GiB + 4 * GiB and e.peak == max(sum(e.parts.values()), e.load_peak)
    assert "loading" in e.describe() and e.to_dict()["load_peak_MiB"] == e.load_peak / M
    assert estimate(text, cfg, CPU, width=64, runtime=GiB).load_peak == 0


def test_a_run_records_plan_and_measured_peak(tiny_text_model_dir, tmp_path, monkeypatch, capsys):
    from train.pretrained import read_text_config
    data = write_dapt_data(tmp_path / "dapt")
    # A budget that fits only with checkpointing, from the plan's own figures at a fixed runtime (fp32: the
    # embedding counts whole, whatever rows the data reads).
    runtime = 400 * 2**20
    monkeypatch.setattr(memory_plan, "runtime_bytes", lambda device: runtime)
    cfg = TrainConfig(phase="dapt", precision="fp32", micro_batch_size=4, max_length=128, grad_accum=1).resolve()
    text_cfg = read_text_config(tiny_text_model_dir)[0]
    given, ckpt = (estimate(text_cfg, dataclasses.replace(cfg, gradient_checkpointing=c), CPU, width=128,
                            runtime=runtime).peak for c in (False, True))
    assert ckpt < given
    budget = (ckpt + given) / 2 / (1 - HEADROOM) / GiB
    args = ["--phase", "dapt", "--model-path", str(tiny_text_model_dir), "--dapt-dir", str(data), "--max-length",
            "128", "--micro-batch-size", "4", "--grad-accum", "1", "--max-steps", "1", "--eval-max-batches", "1",
            "--precision", "fp32", "--device", "cpu"]

    out = tmp_path / "run"
    assert main(args + ["--output-dir", str(out), "--memory-budget", f"{budget:.6f}"]) == 0
    saved = json.loads((out / "training_args.json").read_text())
    record = saved["memory_plan"]
    assert saved["gradient_checkpointing"] is True and record["changed"] == {"gradient_checkpointing": True}
    assert record["predicted_peak_MiB"] == round(ckpt / 2**20, 1) and record["measured_peak_MiB"] > 0
    assert [e["gradient_checkpointing"] for e in record["considered"]] == [False, True]
    assert "the plan turned on --gradient-checkpointing" in (out / "train.log").read_text()

    small = tmp_path / "small"
    capsys.readouterr()
    assert main(args + ["--output-dir", str(small), "--memory-budget", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "memory plan: this run needs an estimated" in err and "Traceback" not in err
    assert not (small / "checkpoints").exists()


def test_memory_budget_must_be_auto_off_or_gib(tmp_path, capsys):
    assert main(["--phase", "dapt", "--memory-budget", "lots", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--memory-budget lots: must be auto, off or a number of GiB" in capsys.readouterr().err


STEADY = """
import ctypes, sys, torch
from train.device import steady_cpu_allocator
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024
if sys.argv[1] == 'steady':
    steady_cpu_allocator()
big = torch.ones(30 * 2**20 // 4); del big          # glibc's default raises its mmap threshold to 30 MiB here
keep = [torch.ones(2**20 // 4) for _ in range(4)]     # small blocks on the heap above what follows
x = torch.ones(24 * 2**20 // 4); x += 1
before = rss(); del x; after = rss()
print(before - after)
"""


@pytest.mark.parametrize("mode", ["steady", "default"])
def test_steady_cpu_allocator_returns_freed_activations(mode):
    """With the fixed mmap threshold a freed 24 MiB block leaves the RSS at once; with glibc's default (after
    a larger block raised its threshold) it stays in the heap: the RSS ratchet the memory plan must avoid."""
    out = subprocess.run([sys.executable, "-c", STEADY, mode], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, check=True)
    dropped = int(out.stdout.split()[-1])
    if mode == "steady":
        assert dropped >= 20 * 2**20, dropped
    else:
        assert dropped < 4 * 2**20, dropped
