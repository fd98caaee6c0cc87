"""Issue 7: the memory-lean loss (LM head on labelled positions only, in chunks) equals the plain one."""
from __future__ import annotations

import pytest
import torch

from conftest import lora_model
from train.batching import SHARED_PREFIX_MIN_TOKENS, Row, collate, shared_prefix_length
from train.config import TrainConfig
from train.loss import full_logits_loss_sum, labels_only_loss_sum
from train.lora_model import build_model, causal_lm


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_labels_only_loss_and_grads_equal_full_logits(tiny_text_model_dir, attention):
    model = lora_model(tiny_text_model_dir, attention=attention)
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


def test_labels_only_loss_gives_every_weight_its_gradient_without_lora(tiny_text_model_dir):
    # --no-use-lora: the LM head and the embedding train too; the lean loss must give them the plain gradients.
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32", use_lora=False).resolve()
    lm = causal_lm(build_model(cfg, torch.device("cpu"), lambda _: None))
    g = torch.Generator().manual_seed(4)
    rows = [Row(f"r{i}", ids, ids) for i, ids in enumerate(torch.randint(1000, 4000, (3, 40), generator=g).tolist())]
    batch = collate(rows)
    grads = []
    for fn in (lambda: full_logits_loss_sum(lm, batch), lambda: labels_only_loss_sum(lm, batch, 9)):
        lm.zero_grad(set_to_none=True)
        fn().backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters()})
    plain, lean = grads
    assert lean.keys() == plain.keys() and "lm_head.weight" in lean and "model.embed_tokens.weight" in lean
    worst = max(((lean[n] - plain[n]).abs().max() / plain[n].abs().max().clamp_min(1e-12)).item() for n in plain)
    assert worst < 1e-5, worst


def test_labels_only_loss_without_grad_and_empty_labels(tiny_text_model_dir):
    cfg = TrainConfig(phase="sft", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    lm = causal_lm(build_model(cfg, torch.device("cpu"), lambda _: None))
    batch = collate([Row("a", [1, 1500, 1600], [-100, -100, -100])])
    with torch.no_grad():
        assert labels_only_loss_sum(lm, batch, 4).item() == 0.0


def _rows_with_common_prefix(prefix_len: int, seed: int = 2) -> list[Row]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1000, 4000, (prefix_len,), generator=g).tolist()
    rows = []
    for i, (tail, prompt) in enumerate([(30, 6), (12, 3), (45, 20), (21, 9)]):
        ids = prefix + torch.randint(1000, 4000, (tail,), generator=g).tolist()
        labels = [-100] * (prefix_len + prompt) + ids[prefix_len + prompt:]
        rows.append(Row(f"r{i}", ids, labels))
    return rows


def test_shared_prefix_length_stops_where_rows_differ_or_labels_start():
    rows = _rows_with_common_prefix(40)
    assert shared_prefix_length(rows) == 40
    assert shared_prefix_length(rows[:1]) == 0  # nothing to share with one row
    # A label right after the common part: the last prefix position must stay in the trunk output.
    rows[1] = Row("early", rows[1].input_ids, [-100] * 40 + rows[1].input_ids[40:])
    assert shared_prefix_length(rows) == 39
    assert shared_prefix_length(_rows_with_common_prefix(SHARED_PREFIX_MIN_TOKENS - 1)) == 0


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_shared_prefix_loss_and_grads_equal_whole_rows(tiny_text_model_dir, attention):
    model = lora_model(tiny_text_model_dir, attention=attention)
    lm = causal_lm(model)
    rows = _rows_with_common_prefix(40)
    shared, whole = collate(rows, share_prefix=True), collate(rows)
    assert shared["shared_prefix"] == 40 and whole["shared_prefix"] == 0
    assert shared["n_label_tokens"] == whole["n_label_tokens"] and torch.equal(shared["targets"], whole["targets"])
    assert shared["n_trunk_tokens"] == whole["n_tokens"] - 3 * 40
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = labels_only_loss_sum(lm, batch, 7)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    a, a_grads = loss_and_grads(shared)
    b, b_grads = loss_and_grads(whole)
    assert torch.allclose(a, b, rtol=1e-5), (a, b)
    # Every row's gradient reaches the one prefix pass: the adapters of all layers get the same gradient
    # as when each row runs whole (fp32 rounding aside; a missing prefix contribution would be O(1)).
    worst = max(((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a_grads, b_grads))
    assert worst < 1e-4, worst


def test_labels_only_loss_under_bf16_autocast_matches_full_logits(tiny_text_model_dir):
    """The recipe's precision: frozen bf16 base, fp32 adapters, bf16 autocast. The fused head computes its
    gradient inside the forward pass, where autocast is still active; it must give the plain path's loss
    and gradients up to bf16 rounding, and hand fp32 gradients to the fp32 adapters. Measured: loss equal
    to 1e-7 relative, gradients within 0.8% relative norm (bf16 rounds in different places on the two paths);
    a lost or mis-scaled head gradient is off by O(1)."""
    from train.lora_model import attach_lora
    from train.pretrained import load_text_model
    cfg = TrainConfig(phase="sft", model_path=str(tiny_text_model_dir), precision="bf16", lora_dropout=0.0).resolve()
    model = attach_lora(load_text_model(tiny_text_model_dir, dtype=torch.bfloat16, device=torch.device("cpu")), cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    lm = causal_lm(model)
    rows = [Row(f"r{i}", torch.randint(1000, 4000, (n,), generator=g).tolist(), None) for i, n in enumerate((40, 23))]
    rows = [Row(r.row_id, r.input_ids, [-100] * 5 + r.input_ids[5:]) for r in rows]
    batch = collate(rows)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    plain, plain_grads = loss_and_grads(lambda: full_logits_loss_sum(lm, batch))
    lean, lean_grads = loss_and_grads(lambda: labels_only_loss_sum(lm, batch, 16))
    assert lean.dtype == torch.float32 and all(gr.dtype == torch.float32 for gr in lean_grads)
    assert torch.allclose(lean, plain, rtol=1e-5), (lean, plain)
    # bf16 keeps 8 bits of mantissa: the two paths round in different places, so compare whole gradients.
    worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(lean_grads, plain_grads))
    assert worst < 2e-2, worst
