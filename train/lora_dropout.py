"""LoRA dropout for CPU training whose keep-masks come from 64-bit random words, not torch's bernoulli_.

Why this exists: on a CPU, torch's bernoulli_ takes MKL's vectorised path only when the CPU is an Intel
one; everywhere else it draws element by element on one thread, and peft draws one mask per adapted
projection, seven per layer, so the masks become a visible share of a CPU step (docs/performance.md).
Filling int64 words with random_ over the full 64-bit range and cutting each word into four 16-bit lanes
gives four independent uniform draws per word, several times faster.

What it keeps the same as nn.Dropout: an independent mask per call and per element, the global torch RNG
(so --seed and the checkpointed RNG states govern it exactly as before), inputs scaled by 1 / keep so the
expectation is unchanged, gradients masked and scaled the same way, identity in eval mode. What differs:
the drop probability is p rounded to a multiple of 1/65536 (0.05 becomes 3277/65536 = 0.050003), and the
scale is the inverse of that rounded keep probability, so the expectation stays exact. The masks are not
the ones nn.Dropout would draw from the same seed.

On other devices the module calls F.dropout (CUDA's dropout is a fused Philox kernel already), and so it
does for a p too small for the lanes' resolution (below ~0.001).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANES = 65536  # a 16-bit lane holds one of 65536 equally likely values


def drop_threshold(p: float) -> int:
    """How many of the 65536 lane values mean "drop": p rounded to the lane resolution."""
    return round(p * LANES)


def lanes_fit(p: float) -> bool:
    """Whether p survives rounding to 1/65536 within 1% (p >= ~0.001); smaller p go to F.dropout."""
    dropped = drop_threshold(p)
    return 0 < dropped < LANES and abs(dropped / LANES - p) <= 0.01 * p


class _LaneMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
        lanes = words.view(torch.int16)[:n].view(x.shape)
        # A lane reads as int16 in [-32768, 32767]; the lowest `dropped` values mean "drop". The 0/1 mask is
        # built in the lanes' own int16, in place: clamping to [first_kept - 1, first_kept] and subtracting
        # first_kept - 1 leaves exactly 0 or 1, and both bounds lie inside int16 for any p the lanes take,
        # so nothing overflows. Then one cast to x's dtype. On CPU, comparisons into bool tensors,
        # bool-by-bf16 products and a detour through fp32 are all slower than these same-dtype vectorised ops.
        dropped = drop_threshold(p)
        first_kept = dropped - LANES // 2
        keep = lanes.clamp_(first_kept - 1, first_kept).sub_(first_kept - 1).to(x.dtype)
        # Scaling after masking, by a Python float: each survivor is rounded once from the exact product. A
        # scale stored in bf16 (as torch's CPU dropout keeps it for bf16 inputs) would itself be rounded and
        # bias every kept value.
        ctx.scale = LANES / (LANES - dropped)
        ctx.save_for_backward(keep)
        return (x * keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None


class LaneMaskDropout(nn.Module):
    """Drop-in for the nn.Dropout peft puts in front of each LoRA A matrix (see the module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"LaneMaskDropout: p must be in [0, 1), got {p}")
        self.p = p
        self.lanes = lanes_fit(p)  # decided once: p does not change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not self.lanes:
            return F.dropout(x, self.p, training=True)
        return _LaneMaskDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (f", on CPU {drop_threshold(self.p)}/{LANES}" if self.lanes else "")


def use_lane_mask_dropout(model, enable: bool = True) -> int:
    """Put LaneMaskDropout (or, with enable=False, torch's nn.Dropout back) in every LoRA layer's
    lora_dropout; returns how many were replaced. The bench's --stock-dropout uses the reverse swap."""
    old, new = (nn.Dropout, LaneMaskDropout) if enable else (LaneMaskDropout, nn.Dropout)
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is old:
                drops[name] = new(drop.p)
                replaced += 1
    return replaced
