"""The CPU LoRA dropout (train/lora_dropout.py) behaves as nn.Dropout does, in distribution and in autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import lora_model
from train.lora_dropout import LANES, LaneMaskDropout, drop_threshold, lanes_fit, use_lane_mask_dropout

N = 1 << 20  # one million elements: the drop rate's standard error is ~2e-4 at p = 0.05


def _dropped_share(y: torch.Tensor) -> float:
    return (y == 0).double().mean().item()


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    drop = LaneMaskDropout(p).train()
    y = drop(torch.ones(N))
    rounded = drop_threshold(p) / LANES
    sigma = (rounded * (1 - rounded) / N) ** 0.5
    assert abs(_dropped_share(y) - rounded) < 5 * sigma
    kept = y[y != 0]
    assert torch.all(kept == 1 / (1 - rounded))  # every survivor scaled by the inverse of the keep rate
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - rounded)  # expectation preserved


def test_neighbouring_lanes_are_independent():
    # The four 16-bit lanes of one 64-bit word land on neighbouring elements: their drops must not correlate.
    torch.manual_seed(1)
    p = 0.25
    y = LaneMaskDropout(p).train()(torch.ones(N)).view(-1, 4) == 0
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        joint = (y[:, a] & y[:, b]).double().mean().item()
        assert abs(joint - p * p) < 5 * (p * p * (1 - p * p) / (N // 4)) ** 0.5, (a, b)


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = (torch.rand(3, 70, 33) + 0.5).requires_grad_()  # no zeros, so y / x recovers the mask
    g = torch.randn(3, 70, 33)
    y = LaneMaskDropout(0.2).train()(x)
    y.backward(g)
    kept = (y != 0).float()
    scale = LANES / (LANES - drop_threshold(0.2))
    assert torch.equal(y, (x.detach() * kept) * scale)
    assert torch.equal(x.grad, (g * kept) * scale)


def test_bf16_in_bf16_out_survivors_rounded_once():
    torch.manual_seed(3)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    y = LaneMaskDropout(0.1).train()(x)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    scale = LANES / (LANES - drop_threshold(0.1))
    # Rounded once from the exact scale. (torch's own CPU dropout multiplies bf16 inputs by the scale rounded
    # to bf16: 1/0.9 becomes 1.1094, every survivor 0.16% low.)
    assert torch.equal(y[kept], x[kept] * scale)


def test_eval_mode_and_p_zero_are_identity():
    x = torch.randn(8, 16)
    assert LaneMaskDropout(0.3).eval()(x) is x
    assert LaneMaskDropout(0.0).train()(x) is x


def test_seeded_and_fresh_per_call():
    drop = LaneMaskDropout(0.5).train()
    torch.manual_seed(4)
    a, b = drop(torch.ones(4096)), drop(torch.ones(4096))
    torch.manual_seed(4)
    assert torch.equal(drop(torch.ones(4096)), a)  # the global RNG decides, so --seed and resume govern it
    assert not torch.equal(a, b)


def test_small_p_falls_back_to_torch_dropout_and_bad_p_is_refused():
    assert lanes_fit(0.05) and lanes_fit(0.001)
    assert not lanes_fit(1e-5) and not lanes_fit(0.0)
    torch.manual_seed(5)
    y = LaneMaskDropout(1e-4).train()(torch.ones(N))
    assert 0 < (y == 0).sum().item() < 400  # ~105 expected: still dropping, at the exact p
    with pytest.raises(ValueError, match="p must be in"):
        LaneMaskDropout(1.0)


def test_attach_lora_installs_it_in_every_adapted_projection(tiny_text_model_dir):
    model = lora_model(tiny_text_model_dir, lora_dropout=0.05)
    drops = [m for m in model.modules() if isinstance(m, (LaneMaskDropout, nn.Dropout))]
    layers = len(model.base_model.model.model.layers)
    assert len(drops) == 7 * layers and all(isinstance(d, LaneMaskDropout) and d.p == 0.05 for d in drops)
    # The dropout holds no state: the adapter's saved tensors are the same names as with stock peft.
    assert all("dropout" not in name for name in model.state_dict())
    # The bench's --stock-dropout swaps back; swapping twice is a no-op.
    assert use_lane_mask_dropout(model, enable=False) == 7 * layers
    assert use_lane_mask_dropout(model, enable=False) == 0
    assert all(type(m) is nn.Dropout and m.p == 0.05 for m in model.modules() if isinstance(m, (LaneMaskDropout, nn.Dropout)))


def test_activation_checkpointing_recomputes_the_same_masks(tiny_text_model_dir):
    # Checkpointing reruns each layer's forward in backward; the masks must come out the same both times,
    # or the gradients would belong to other masks than the loss.
    from train.batching import Row, collate
    from train.loss import labels_only_loss_sum
    from train.lora_model import causal_lm
    batch = collate([Row("a", list(range(1000, 1040)), [-100] * 10 + list(range(1010, 1040)))])
    grads = {}
    for ckpt in (False, True):
        model = lora_model(tiny_text_model_dir, lora_dropout=0.1, gradient_checkpointing=ckpt)
        model.train()
        torch.manual_seed(7)
        labels_only_loss_sum(causal_lm(model), batch, 16).backward()
        grads[ckpt] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[False].keys() == grads[True].keys() and grads[True]
    for n in grads[False]:
        assert torch.allclose(grads[False][n], grads[True][n], rtol=1e-5, atol=1e-7), n
