"""FLOPs/MFU arithmetic (docs/performance.md, "What is measured") checked against hand counts and against real modules."""
from __future__ import annotations

import math

import pytest
import torch

from train.pretrained import LINEAR_PROJECTIONS
from train.flops import (lora_param_count, measure_matmul_peak, mfu,
                         model_flops_per_token)

# The 8B text_config (docs/model.md).
EIGHT_B = dict(hidden_size=4096, num_hidden_layers=34, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=14336, vocab_size=131072, tie_word_embeddings=False)
# head_dim * heads != hidden on purpose, as in the real model (32 * 128 = 4096 only by coincidence there).
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
            intermediate_size=96, vocab_size=512, tie_word_embeddings=False)


def _tiny_model(**overrides):
    from transformers import Ministral3Config, Ministral3ForCausalLM
    torch.manual_seed(0)
    return Ministral3ForCausalLM(Ministral3Config(**{**TINY, **overrides}))


def test_tiny_hand_count():
    # q 64x96, k 64x48, v 64x48, o 96x64, gate/up 64x96, down 96x64; lm_head 64x512
    per_layer = 6144 + 3072 + 3072 + 6144 + 3 * 6144
    n = 2 * per_layer + 64 * 512
    f = model_flops_per_token(TINY, seq_len=9)
    assert f["params_matmul"] == n == 106496
    assert f["params_total"] == n + 512 * 64 + 2 * 2 * 64 + 64
    # 2 layers x causal mean context (9+1)/2 = 5 x (scores + weighted sum: 2 * 2 * heads * head_dim).
    attn_fwd = 2 * (2 * 2 * 4 * 24 * 5)
    assert f["attention_forward"] == attn_fwd
    assert f["forward"] == 2 * n + attn_fwd
    assert f["backward"] == 2 * n + 2 * attn_fwd
    assert f["model_flops"] == f["hardware_flops"] == 4 * n + 3 * attn_fwd
    assert f["recompute"] == 0


def test_counts_match_real_module():
    model = _tiny_model()
    f = model_flops_per_token(model.config, seq_len=16)
    assert f["params_total"] == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert f["params_matmul"] == linear
    assert f["params_lm_head"] == model.lm_head.weight.numel()
    assert f["params_embedding"] == model.model.embed_tokens.weight.numel()


def test_tied_embeddings_keep_lm_head_matmul():
    model = _tiny_model(tie_word_embeddings=True)
    f = model_flops_per_token(model.config, seq_len=16)
    assert f["params_total"] == sum(p.numel() for p in model.parameters())
    assert f["params_matmul"] == model_flops_per_token(TINY, seq_len=16)["params_matmul"]


def test_vlm_config_uses_text_config():
    from transformers import Ministral3Config
    vlm_like = {"model_type": "mistral3", "text_config": Ministral3Config(**TINY)}
    assert model_flops_per_token(vlm_like, 32) == model_flops_per_token(TINY, 32)


def test_lora_param_count_matches_peft():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(_tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=list(LINEAR_PROJECTIONS)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_param_count(TINY, rank=4) == trainable
    assert lora_param_count(TINY, rank=4, targets=("q_proj",)) == 2 * 4 * (64 + 96)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora_param_count(TINY, rank=4, targets=("lm_head",))


def test_lora_and_checkpointing_terms():
    p = lora_param_count(TINY, rank=8)
    base = model_flops_per_token(TINY, seq_len=64)
    lora = model_flops_per_token(TINY, seq_len=64, lora_params=p)
    assert lora["forward"] - base["forward"] == 2 * p
    assert lora["backward"] - base["backward"] == 4 * p
    ckpt = model_flops_per_token(TINY, seq_len=64, lora_params=p, activation_checkpointing=True)
    assert ckpt["model_flops"] == lora["model_flops"]  # recompute never counts as model FLOPs
    layer_matmul = lora["params_matmul"] - lora["params_lm_head"]
    assert ckpt["recompute"] == 2 * layer_matmul + lora["attention_forward"] + 2 * p
    assert ckpt["hardware_flops"] == ckpt["model_flops"] + ckpt["recompute"]
    full = model_flops_per_token(TINY, seq_len=64, full_finetune=True)
    assert full["backward"] - base["backward"] == 2 * base["params_matmul"]


def test_eight_b_parameters_and_flops():
    f = model_flops_per_token(EIGHT_B, seq_len=2048, lora_params=lora_param_count(EIGHT_B, rank=16))
    assert f["params_total"] == pytest.approx(8.49e9, rel=2e-3)  # docs/model.md: 8.49 B
    assert f["params_total"] * 2 / 2**30 == pytest.approx(15.8, abs=0.05)  # bf16 GiB
    n = f["params_matmul"]
    assert n == pytest.approx(7.95e9, rel=2e-3)
    # LoRA with frozen weights: ~4N, plus attention (a few %) and a tiny adapter term.
    assert 4 * n < f["model_flops"] < 4.35 * n
    assert f["model_flops"] == pytest.approx(3.38e10, rel=0.01)
    assert f["params_lora"] == 44_564_480  # r16 on all seven projections of 34 layers


def test_eight_b_matches_meta_model():
    from transformers import Ministral3Config, Ministral3ForCausalLM
    with torch.device("meta"):
        model = Ministral3ForCausalLM(Ministral3Config(**EIGHT_B))
    assert model_flops_per_token(model.config, 512)["params_total"] == sum(p.numel() for p in model.parameters())


def test_mfu_counts_model_flops_not_recompute():
    """A run that recomputes activations does more work for the same tokens: its MFU must not rise with it."""
    p = lora_param_count(EIGHT_B, rank=16)
    plain, ckpt = (model_flops_per_token(EIGHT_B, 2048, p, activation_checkpointing=c) for c in (False, True))
    assert ckpt["hardware_flops"] > 1.3 * plain["hardware_flops"]
    assert mfu(3000.0, ckpt, 989.4e12) == mfu(3000.0, plain, 989.4e12)
    # The 8B recipe at 3000 tokens/s on an H100 SXM: 3.38e10 FLOPs/token x 3000 / 989.4 TFLOP/s = 10.2 %.
    assert mfu(3000.0, plain, 989.4e12) == pytest.approx(0.1025, abs=5e-4)
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            mfu(1.0, 1.0, bad)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 362.05e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12), ("NVIDIA H100 NVL", None), ("NVIDIA H200 NVL", None),
    ("NVIDIA GeForce RTX 3090", None),
])
def test_datasheet_peaks_of_known_cards(name, peak):
    from train.flops import datasheet_peak
    assert datasheet_peak(name) == peak


def test_mfu_peak_uses_the_datasheet_on_a_known_gpu_and_labels_the_fallback(monkeypatch):
    from train.flops import mfu_peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert mfu_peak("cuda:0", torch.bfloat16, 7.4e14) == (989.4e12, "datasheet bf16 dense peak of NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    peak, label = mfu_peak("cuda:0", torch.bfloat16, 7.4e14)
    assert peak == 7.4e14 and label.startswith("measured matmul rate (Some Future GPU is not in the datasheet table")
    assert mfu_peak("cpu", torch.float32, 1.6e11) == (1.6e11, "measured float32 matmul rate on cpu")


def test_measure_matmul_peak_cpu_is_plausible():
    # How long the measurement takes is a benchmark's business (./run.sh bench), not a test's: a CPU without
    # native bf16 runs the same call several times slower.
    peak = measure_matmul_peak("cpu", dtype=torch.float32, size=256, seconds=0.2)
    assert math.isfinite(peak) and 1e8 < peak < 1e14


def test_measure_matmul_peak_counts_2n3_flops_per_matmul(monkeypatch):
    """The rate is 2*n^3 FLOPs per matmul over the timed seconds: with a clock that advances 1 s per matmul,
    the measured rate must be exactly 2*n^3."""
    import train.flops as flops
    calls = {"n": 0}
    real_matmul = torch.matmul

    def counting_matmul(*args, **kwargs):
        calls["n"] += 1
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(flops.time, "perf_counter", lambda: float(calls["n"]))
    monkeypatch.setattr(flops.torch, "matmul", counting_matmul)
    n = 64
    assert measure_matmul_peak("cpu", dtype=torch.float32, size=n, seconds=5.0) == pytest.approx(2 * n ** 3)


@pytest.mark.cuda
def test_measure_matmul_peak_cuda_against_the_datasheet():
    """After the 1 s warm-up, cuBLAS's bf16 rate on a known card is a fair share of its datasheet peak, never above."""
    from train.flops import datasheet_peak
    measured = measure_matmul_peak("cuda", size=8192, seconds=0.5)
    sheet = datasheet_peak(torch.cuda.get_device_name())
    if sheet is None:
        pytest.skip(f"{torch.cuda.get_device_name()} is not in the datasheet table (measured {measured / 1e12:.0f} TFLOP/s)")
    assert 0.4 * sheet < measured <= 1.05 * sheet, (measured, sheet)
