"""Model FLOPs per token, a measured matmul peak, and MFU (docs/performance.md, "What is measured").

Counting conventions (each one is a choice; they are stated here so reported MFU can be compared):

- N, the "matmul parameters", are the weights that take part in a matrix multiply for every token:
  the attention projections q/k/v/o and the SwiGLU gate/up/down of every decoder layer, plus lm_head.
  lm_head is included because training computes logits for every position (it is ~7% of the 8B
  model's matmul work, too much to drop). The input embedding is excluded: it is a table lookup.
  Norm weights are excluded: elementwise, not matmuls. With tied embeddings the lm_head matmul is
  still done, so N keeps it even though the parameter is shared.
- One multiply-add is 2 FLOPs, so a forward pass costs 2N per token.
- Backward with LoRA on frozen base weights needs only activation (input) gradients through the
  frozen matrices, which is one matmul per weight: 2N. (Strictly, layer 0's frozen projections need
  no input gradient because the embedding is frozen; that sliver is not subtracted.) Full
  fine-tuning adds the weight gradients: 4N.
- LoRA's own matrices (A: in x r, B: r x out) cost 2P forward, 2P for their input gradients and 2P
  for their weight gradients per token, P being the adapter parameter count: 6P in all. Dropout
  and the scaling multiply are elementwise and not counted.
- Attention scores (Q K^T) and the weighted sum (P V) cost 2 * heads * head_dim FLOPs per token
  per context position each. We count causal attention: token t attends to t positions, so the
  mean context over a sequence of length S is (S + 1) / 2. The masked upper triangle is not
  counted, because SDPA/FlashAttention's causal kernels skip (most of) it and model FLOPs should
  not credit work the model does not need. Backward of attention is twice its forward (dQ, dK
  from dS; dV, dP from dO). Softmax, RoPE and norms are elementwise and left out.
- Activation checkpointing recomputes the forward of each checkpointed decoder layer (matmuls,
  attention and LoRA) during backward. That work is "hardware FLOPs": it is reported separately
  and never included in model FLOPs, so MFU does not improve by recomputing. lm_head is not
  recomputed: per-layer checkpointing (transformers' and ours) wraps decoder layers only.
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping

import torch

from train.pretrained import LINEAR_PROJECTIONS


def _get(cfg, name, default=None):
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _text_config(cfg):
    # Accept the VLM config (Mistral3Config) as well: its language model lives in text_config.
    inner = _get(cfg, "text_config")
    return inner if inner is not None else cfg


def _shapes(text_config) -> dict:
    cfg = _text_config(text_config)
    hidden = int(_get(cfg, "hidden_size"))
    heads = int(_get(cfg, "num_attention_heads"))
    kv_heads = int(_get(cfg, "num_key_value_heads") or heads)
    head_dim = _get(cfg, "head_dim") or hidden // heads
    return dict(hidden=hidden, layers=int(_get(cfg, "num_hidden_layers")), heads=heads, kv_heads=kv_heads,
                head_dim=int(head_dim), intermediate=int(_get(cfg, "intermediate_size")),
                vocab=int(_get(cfg, "vocab_size")), tied=bool(_get(cfg, "tie_word_embeddings", False)))


def _linear_shapes(s: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection in one decoder layer."""
    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, s["intermediate"]), "up_proj": (h, s["intermediate"]),
            "down_proj": (s["intermediate"], h)}


def lora_param_count(text_config, rank: int, targets=LINEAR_PROJECTIONS) -> int:
    """Adapter parameters for LoRA of this rank on the named projections of every decoder layer."""
    s = _shapes(text_config)
    shapes = _linear_shapes(s)
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; known: {sorted(shapes)}")
    return s["layers"] * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def model_flops_per_token(text_config, seq_len: int, lora_params: int = 0, activation_checkpointing: bool = False,
                          *, full_finetune: bool = False) -> dict:
    """FLOPs per trained token for one forward + backward of a Ministral 3 text model.

    seq_len is the length of the sequences the tokens come from (it sets the causal attention
    context). Returns counts (params_*) and per-token FLOPs: forward, backward, model_flops
    (forward + backward, what MFU uses), recompute and hardware_flops (model_flops + recompute).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if lora_params < 0:
        raise ValueError(f"lora_params must be >= 0, got {lora_params}")
    s = _shapes(text_config)
    h, L, V = s["hidden"], s["layers"], s["vocab"]
    shapes = _linear_shapes(s)

    per_layer_matmul = sum(i * o for i, o in shapes.values())
    layer_matmul = L * per_layer_matmul
    lm_head = h * V
    n = layer_matmul + lm_head

    norms = L * 2 * h + h
    embedding = V * h
    # Ministral 3's linear layers have no biases, so matmul weights + norms + embedding is everything.
    total = embedding + layer_matmul + norms + (0 if s["tied"] else lm_head)

    context = (seq_len + 1) / 2
    attn_fwd = L * 2 * 2 * s["heads"] * s["head_dim"] * context
    attn_bwd = 2 * attn_fwd

    lora_fwd = 2 * lora_params
    lora_bwd = 4 * lora_params

    forward = 2 * n + attn_fwd + lora_fwd
    backward = (4 if full_finetune else 2) * n + attn_bwd + lora_bwd
    model_flops = forward + backward
    recompute = (2 * layer_matmul + attn_fwd + lora_fwd) if activation_checkpointing else 0
    return {
        "params_total": total,
        "params_embedding": embedding,
        "params_matmul": n,
        "params_lm_head": lm_head,
        "params_lora": lora_params,
        "seq_len": seq_len,
        "attention_context": context,
        "attention_forward": attn_fwd,
        "attention_backward": attn_bwd,
        "lora_flops": lora_fwd + lora_bwd,
        "forward": forward,
        "backward": backward,
        "model_flops": model_flops,
        "recompute": recompute,
        "hardware_flops": model_flops + recompute,
    }


# Datasheet dense bf16 tensor-core peaks (FLOP/s, no sparsity), by a pattern of torch.cuda.get_device_name: the
# denominator papers and peers use for MFU. Sources are in docs/performance.md ("MFU"). First match wins, so the
# NVL variants (other clocks and power caps) fall through to the measured rate rather than borrow a figure.
DATASHEET_BF16_PEAKS = (
    (r"H100.*NVL|H200.*NVL", None),
    (r"H100.*(SXM|HBM3)", 989.4e12),
    (r"H100.*PCIe", 756e12),
    (r"H200", 989.4e12),
    (r"A100", 312e12),
    (r"L40S", 362.05e12),
    (r"RTX 4090", 165.2e12),
)


def datasheet_peak(device_name: str) -> float | None:
    """The card's datasheet bf16 dense peak, None for a card not in DATASHEET_BF16_PEAKS."""
    for pattern, peak in DATASHEET_BF16_PEAKS:
        if re.search(pattern, device_name):
            return peak
    return None


def mfu_peak(device, dtype: torch.dtype, measured: float) -> tuple[float, str]:
    """(MFU denominator, its label): the datasheet bf16 peak of a known GPU under bf16, else the measured rate."""
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name)
        if peak is not None:
            return peak, f"datasheet bf16 dense peak of {name}"
        return measured, f"measured matmul rate ({name} is not in the datasheet table)"
    return measured, f"measured {str(dtype).removeprefix('torch.')} matmul rate on {device.type}"


def measure_matmul_peak(device, dtype: torch.dtype = torch.bfloat16, size: int | None = None,
                        seconds: float | None = None) -> float:
    """Achieved FLOP/s of a square matmul loop on `device` in `dtype`: the MFU denominator.

    On CPU, where no datasheet applies (bf16 is fast only with AVX512-BF16/AMX), this is the MFU
    denominator; on a GPU it is reported beside the datasheet peak (mfu_peak). On CPU the matmul runs with
    torch's current thread count, i.e. the threads training uses.
    """
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    if size is None:
        size = 8192 if is_cuda else 1024
    if seconds is None:
        seconds = 1.0 if is_cuda else 0.75

    def sync():
        if is_cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        gen = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        # Warm-up: kernel selection, oneDNN/cuBLAS workspace allocation, and on a GPU the clock ramp-up,
        # which takes about a second from idle.
        warm_s = 1.0 if is_cuda else min(0.25, seconds / 3)
        iters, t_warm = 0, time.perf_counter()
        while iters < 2 or time.perf_counter() - t_warm < warm_s:
            torch.matmul(a, b, out=out)
            sync()
            iters += 1
        per_iter = (time.perf_counter() - t_warm) / iters
        # Launch in batches of ~0.1 s and synchronise once per batch, so the timed loop measures the
        # device, not the host's launch-and-wait round trip.
        batch = max(1, int(0.1 / max(per_iter, 1e-9)))
        done = 0
        start = time.perf_counter()
        while True:
            for _ in range(batch):
                torch.matmul(a, b, out=out)
            sync()
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return 2.0 * size ** 3 * done / elapsed


def mfu(tokens_per_s: float, flops_per_token, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (mfu_peak's; a fraction, not %).

    flops_per_token may be the dict from model_flops_per_token (its model_flops is used: recompute
    from activation checkpointing is excluded by definition).
    """
    if isinstance(flops_per_token, Mapping):
        flops_per_token = flops_per_token["model_flops"]
    if not peak or peak <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak}")
    if tokens_per_s < 0 or flops_per_token < 0:
        raise ValueError("tokens_per_s and flops_per_token must be >= 0")
    return float(tokens_per_s) * float(flops_per_token) / float(peak)


def labels_only_step_flops(per_token: Mapping, tokens: int, label_tokens: int) -> float:
    """Model FLOPs of a window trained with train/loss.py's labels-only loss.

    The LM head runs only where a label is (forward 2 + input-gradient 2 FLOPs per head weight), the rest
    of the model for every non-pad token; model_flops_per_token counts the head for every token.
    """
    head = 4 * per_token["params_lm_head"]
    return tokens * (per_token["model_flops"] - head) + label_tokens * head
