"""The attention kernel choice (--attention): what auto picks, and that eager and SDPA train the same model."""
from __future__ import annotations

import pytest
import torch
from transformers import Ministral3Config

from conftest import lora_model
from train.batching import Row, collate
from train.config import TrainConfig
from train.loss import labels_only_loss_sum
from train.attention import EAGER_SAVED_SCORES_BUDGET, choose_attention
from train.lora_model import build_model, causal_lm

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(phase="sft", **kw).resolve()


def test_auto_picks_eager_on_cpu_only_while_the_saved_scores_fit():
    bench = Ministral3Config(num_hidden_layers=8, num_attention_heads=8, hidden_size=512, head_dim=64)
    name, why = choose_attention(_cfg(max_length=512), bench, CPU)
    # 8 layers x 2 rows x 8 heads x 512^2 scores x 6 bytes (fp32 softmax output + its bf16 copy)
    assert name == "eager" and "0.19 GiB" in why, why
    assert choose_attention(_cfg(max_length=512), bench, CUDA)[0] == "sdpa"
    # The real model's shapes at the recipe's length: 34 x 2 x 32 x 2048^2 x 6 bytes = 51 GiB on CPU.
    real = Ministral3Config(num_hidden_layers=34, num_attention_heads=32, hidden_size=4096, head_dim=128)
    name, why = choose_attention(_cfg(), real, CPU)
    assert name == "sdpa" and "51.0 GiB" in why, why
    # Just over the budget flips it; fp32 counts 4 bytes per score (the softmax output is the saved copy).
    n = int((EAGER_SAVED_SCORES_BUDGET / (8 * 2 * 8 * 6)) ** 0.5) + 1
    assert choose_attention(_cfg(max_length=n), bench, CPU)[0] == "sdpa"
    assert choose_attention(_cfg(max_length=n, precision="fp32"), bench, CPU)[0] == "eager"
    # An explicit choice is taken as given, on any device.
    assert choose_attention(_cfg(attention="sdpa"), bench, CPU) == ("sdpa", "--attention sdpa")
    assert choose_attention(_cfg(attention="eager"), real, CUDA)[0] == "eager"


def test_build_model_applies_and_logs_the_choice(tiny_text_model_dir):
    lines = []
    cfg = TrainConfig(phase="sft", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    model = build_model(cfg, CPU, lines.append)
    assert causal_lm(model).config._attn_implementation == "eager"
    assert any(line.startswith("attention: auto: eager on CPU") for line in lines), lines
    cfg.attention = "sdpa"
    assert causal_lm(build_model(cfg, CPU, lines.append)).config._attn_implementation == "sdpa"


def _rows(seed: int = 4) -> list[Row]:
    """Rows of different lengths (right padding) sharing a 40-token prefix (the shared-prefix path)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1000, 4000, (40,), generator=g).tolist()
    rows = []
    for i, (tail, prompt) in enumerate([(33, 4), (9, 2), (50, 11)]):
        ids = prefix + torch.randint(1000, 4000, (tail,), generator=g).tolist()
        rows.append(Row(f"r{i}", ids, [-100] * (40 + prompt) + ids[40 + prompt:]))
    return rows


@pytest.mark.parametrize("share_prefix", [False, True])
def test_eager_and_sdpa_give_the_same_loss_and_gradients(tiny_text_model_dir, share_prefix):
    """fp32: the two kernels differ only in summation order, so loss and adapter gradients agree to fp32
    rounding. Measured with eager's mask removed (random tiny model, so attention is nearly uniform): the
    loss moves by 8e-4 relative without a prefix and 4e-3 with one, hundreds of times the tolerance."""
    batch = collate(_rows(), share_prefix=share_prefix)
    assert (batch["shared_prefix"] == 40) == share_prefix
    out = {}
    for attention in ("eager", "sdpa"):
        model = lora_model(tiny_text_model_dir, attention=attention)
        assert causal_lm(model).config._attn_implementation == attention
        loss = labels_only_loss_sum(causal_lm(model), batch, 16)
        loss.backward()
        out[attention] = loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]
    (a, a_grads), (b, b_grads) = out["eager"], out["sdpa"]
    assert torch.allclose(a, b, rtol=1e-6), (a, b)
    worst = max(((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a_grads, b_grads))
    assert worst < 1e-4, worst
