"""Which attention kernel a run uses (--attention auto|sdpa|eager), and why.

On a CPU, SDPA's bf16 flash kernel runs every 32 x 64 block product as its own oneDNN matmul call and its
backward is slower than eager attention's three batched ops, so eager is faster at the lengths a CPU trains
on (docs/performance.md has the A/B). Eager's price is memory (it keeps each layer's score matrices for
backward, quadratic in length) and rounding (scores are rounded to bf16 before the fp32 softmax). Auto
therefore picks eager on a CPU only while those saved scores stay small; on a GPU SDPA's fused kernels are
both faster and leaner.
"""
from __future__ import annotations

import torch

# Eager attention keeps each layer's probabilities for backward: fp32 from the softmax, plus the bf16 copy
# the value matmul saves. Auto stays under this many bytes of them (all layers, a whole micro-batch).
EAGER_SAVED_SCORES_BUDGET = 2 * 2**30


def eager_saved_score_bytes(text_config, micro_batch_size: int, max_length: int, precision: str) -> int:
    """Bytes of attention probabilities eager attention keeps for backward, all layers, one micro-batch."""
    bytes_per_score = 6 if precision == "bf16" else 4
    return (text_config.num_hidden_layers * micro_batch_size * text_config.num_attention_heads
            * max_length ** 2 * bytes_per_score)


def choose_attention(cfg, text_config, device: torch.device) -> tuple[str, str]:
    """The attention implementation for this run and the reason, from --attention, the device and the shapes."""
    if cfg.attention != "auto":
        return cfg.attention, f"--attention {cfg.attention}"
    if device.type != "cpu":
        return "sdpa", f"auto: fused SDPA kernels on {device.type}"
    saved = eager_saved_score_bytes(text_config, cfg.micro_batch_size, cfg.max_length, cfg.precision)
    gib = saved / 2**30
    if saved <= EAGER_SAVED_SCORES_BUDGET:
        return "eager", f"auto: eager on CPU (saved scores at most {gib:.2f} GiB per micro-batch)"
    return "sdpa", (f"auto: sdpa, because eager's saved scores would reach {gib:.1f} GiB per micro-batch "
                    f"(budget {EAGER_SAVED_SCORES_BUDGET / 2**30:.0f} GiB)")


def set_attention(model, cfg, device: torch.device) -> str:
    """Switch `model` (the transformers CausalLM, before LoRA) to choose_attention's pick; returns the reason."""
    name, why = choose_attention(cfg, model.config, device)
    model.set_attn_implementation(name)
    return why
