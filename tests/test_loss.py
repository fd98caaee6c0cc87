"""Issue 7: the memory-lean loss (LM head on labelled positions only, in chunks) equals the plain one."""
from __future__ import annotations

import torch

from conftest import lora_model
from train.batching import Row, collate
from train.config import TrainConfig
from train.loss import full_logits_loss_sum, labels_only_loss_sum
from train.modeling import build_model, causal_lm


def test_labels_only_loss_and_grads_equal_full_logits(tiny_text_model_dir):
    model = lora_model(tiny_text_model_dir)
    lm = causal_lm(model)
    g = torch.Generator().manual_seed(1)
    rows = []
    for i, (n, start) in enumerate([(50, 20), (31, 5), (64, 63), (17, 1)]):
        ids = torch.randint(1000, 4000, (n,), generator=g).tolist()
        labels = [-100] * start + ids[start:]
        labels[start + (n - start) // 2] = -100  # a hole inside a supervised span
        rows.append(Row(f"r{i}", ids, labels))
    batch = collate(rows)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    plain, plain_grads = loss_and_grads(lambda: full_logits_loss_sum(lm, batch))
    # chunk size 7 forces several chunks with a ragged last one
    lean, lean_grads = loss_and_grads(lambda: labels_only_loss_sum(lm, batch, 7))
    assert batch["n_label_tokens"] == sum(1 for r in rows for x in r.labels[1:] if x != -100)
    assert torch.allclose(lean, plain, rtol=1e-6, atol=1e-5), (lean, plain)
    # Same math, different summation order (chunks vs one matmul): agreement to fp32 rounding.
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(lean_grads, plain_grads))
    assert worst < 1e-5, worst


def test_labels_only_loss_without_grad_and_empty_labels(tiny_text_model_dir):
    cfg = TrainConfig(phase="sft", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    lm = causal_lm(build_model(cfg, torch.device("cpu"), lambda _: None))
    batch = collate([Row("a", [1, 1500, 1600], [-100, -100, -100])])
    with torch.no_grad():
        assert labels_only_loss_sum(lm, batch, 4).item() == 0.0
