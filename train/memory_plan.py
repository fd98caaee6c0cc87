"""The memory plan: a run's peak memory predicted before any weight is loaded, and the setting chosen from it.

--memory-budget auto (the default) compares the prediction with the memory this process may use (the free
memory of its GPU, or the host's available RAM on CPU) and picks the fastest setting that fits: the flags as
given, then with activation checkpointing. When neither fits, the run stops before loading, naming what would
fit. --memory-budget N takes N GiB as the budget; off predicts and logs but never changes or stops a run.

What is counted, in bytes (docs/performance.md, "The memory plan", has the derivation and the checks against
measured peaks):
- runtime: what the process holds already when the plan is made (its RSS on CPU: interpreter, libraries,
  tokenizer, data rows; nothing on CUDA, whose peak counter starts at the model);
- frozen weights: the language model in its base dtype. On CPU the bf16 weights stay memory-mapped from the
  safetensors files and only the pages a step reads become resident, so only the embedding rows of token
  ids that occur in the data count;
- adapters: every trainable weight in fp32 with its gradient and two AdamW moments (16 bytes each), and
  under bf16 the copy autocast keeps while a forward pass runs;
- activations: what autograd keeps for backward, per token and layer from the model's shapes (the LoRA
  inputs and dropout masks, the two RMSNorm fp32 inputs, the SwiGLU intermediates, attention's q/k/v/out, or
  eager attention's score matrices), for every layer; with checkpointing only each layer's input, plus one
  layer recomputed during backward;
- the step's transient peak: the larger of the loss (one chunk of logits in the matmul dtype and in fp32,
  and the probabilities cast back for the gradient, plus the final norm's input and the hidden-state
  gradient the loss keeps) and one layer's backward (the recomputed layer under checkpointing, and the
  gradients of its SwiGLU and attention intermediates).
The peak is the larger of that sum and the load peak: on CPU, when the weights are widened (bf16 on disk,
fp32 wanted), each shard stays memory-mapped while its tensors are converted, so loading holds the weights
converted so far plus the read pages of the shard being converted.
"""
from __future__ import annotations

import dataclasses
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contract.errors import UserError
from train.attention import choose_attention
from train.flops import lora_param_count, model_flops_per_token

GiB = 2**30
# Share of the budget the plan keeps free: the CUDA caching allocator reserves more than it hands out, and
# on a host the other processes' memory moves while a run is planned.
HEADROOM = 0.05
# Bytes each process keeps free on a GPU besides HEADROOM, for what max_memory_allocated never counts: cuBLAS
# workspaces, the caching allocator's fragmentation under variable-length SFT batches, and NCCL's buffers.
CUDA_RESERVE = GiB
NCCL_RESERVE = GiB // 2


class MemoryPlanError(UserError):
    """The run would not fit the memory budget in any setting the plan may choose."""


def text_param_count(text_cfg) -> int:
    """Parameters of the language model (embedding, layers, norms, head)."""
    return model_flops_per_token(text_cfg, 1)["params_total"]


@dataclass
class Estimate:
    """Predicted peak of one setting, by part (bytes)."""
    gradient_checkpointing: bool
    attention: str
    micro_batch_size: int
    max_length: int
    parts: dict[str, int]              # what a training step holds at its peak
    load_peak: int = 0                 # what loading holds at its peak (0: no widening, see load_peak)

    @property
    def peak(self) -> int:
        return max(sum(self.parts.values()), self.load_peak)

    def describe(self) -> str:
        flags = (f"micro-batch {self.micro_batch_size} x {self.max_length}, {self.attention} attention, "
                 f"checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        parts = ", ".join(f"{k.replace('_', ' ')} {v / GiB:.2f}" for k, v in self.parts.items())
        load = (f"; loading {self.load_peak / GiB:.2f} GiB, the weights widened while their shard is mapped"
                if self.load_peak else "")
        return f"{flags}: {self.peak / GiB:.2f} GiB ({parts}{load})"

    def to_dict(self) -> dict:
        return {"gradient_checkpointing": self.gradient_checkpointing, "attention": self.attention,
                "micro_batch_size": self.micro_batch_size, "max_length": self.max_length,
                "predicted_peak_MiB": round(self.peak / 2**20, 1),
                "parts_MiB": {k: round(v / 2**20, 1) for k, v in self.parts.items()},
                "load_peak_MiB": round(self.load_peak / 2**20, 1)}


@dataclass
class MemoryPlan:
    mode: str                          # --memory-budget as given: auto, a number of GiB, or off
    device: str
    budget: int | None                 # bytes this process may use, None when unknown
    budget_source: str
    chosen: Estimate
    considered: list[Estimate] = field(default_factory=list)
    changed: dict = field(default_factory=dict)   # flags the plan set, name -> new value
    reserve: int = 0                   # bytes kept free besides HEADROOM (CUDA_RESERVE, NCCL_RESERVE)

    def describe(self) -> str:
        budget = (f"budget {self.budget / GiB:.2f} GiB ({self.budget_source})" if self.budget is not None
                  else f"no budget ({self.budget_source})")
        change = ("; the plan turned on " + ", ".join(f"--{k.replace('_', '-')}" if v is True else
                                                      f"--no-{k.replace('_', '-')}" for k, v in self.changed.items())
                  if self.changed else "")
        return f"memory plan ({self.mode}, {self.device}, {budget}): predicted peak {self.chosen.describe()}{change}"

    def to_dict(self, measured_peak_mib: float | None = None, measured_reserved_mib: float | None = None) -> dict:
        return {"mode": self.mode, "device": self.device,
                "budget_MiB": round(self.budget / 2**20, 1) if self.budget is not None else None,
                "budget_source": self.budget_source, "reserve_MiB": round(self.reserve / 2**20, 1),
                "chosen": self.chosen.to_dict(),
                "considered": [e.to_dict() for e in self.considered], "changed": self.changed,
                "predicted_peak_MiB": round(self.chosen.peak / 2**20, 1),
                "measured_peak_MiB": None if measured_peak_mib is None else round(measured_peak_mib, 1),
                # What the caching allocator held at its peak (CUDA only): the figure an out-of-memory is about.
                "measured_reserved_MiB": None if measured_reserved_mib is None else round(measured_reserved_mib, 1),
                "measured_kind": "torch.cuda.max_memory_allocated" if self.device.startswith("cuda")
                else "peak RSS (ru_maxrss)"}


# --------------------------------------------------------------------------------------- estimate


def _shape(text_cfg) -> dict:
    heads, kv_heads = text_cfg.num_attention_heads, text_cfg.num_key_value_heads or text_cfg.num_attention_heads
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // heads
    return dict(h=text_cfg.hidden_size, layers=text_cfg.num_hidden_layers, heads=heads, q=heads * head_dim,
                kv=kv_heads * head_dim, inter=text_cfg.intermediate_size, vocab=text_cfg.vocab_size)


def _lora_inputs(s: dict, targets: list[str], dropout: bool, attention: str) -> int:
    """Elements per token of the inputs the LoRA A matrices keep for their gradient, one layer.

    With dropout each adapted projection keeps its own dropped copy; without, projections that read the same
    tensor (q/k/v the first norm's output, gate/up the second's) keep it once, and o_proj reads SDPA's own
    output (laid out token-major already), which SDPA keeps anyway.
    """
    width = {"q_proj": s["h"], "k_proj": s["h"], "v_proj": s["h"], "o_proj": s["q"], "gate_proj": s["h"],
             "up_proj": s["h"], "down_proj": s["inter"]}
    if dropout:
        return sum(width[t] for t in targets)
    source = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
              "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}
    inputs = {source[t]: width[t] for t in targets}
    if attention != "eager":
        inputs.pop("o_in", None)
    return sum(inputs.values())


def layer_saved_bytes(s: dict, *, act: int, mask: int, lora_elems: int, rank: int, n_targets: int,
                      attention: str, width: int, repeated_kv: bool = False) -> int:
    """Bytes one decoder layer keeps for backward, per token of a row `width` tokens wide.

    repeated_kv: SDPA runs with an explicit mask (the shared-prefix path's rows against the prefix's cache), so
    transformers repeats K and V to every query head instead of using SDPA's grouped-query mode, and SDPA keeps
    the repeated copies for backward.
    """
    saved = (act + mask) * lora_elems + act * rank * n_targets   # LoRA A inputs (+ masks), LoRA B inputs
    saved += 2 * 4 * s["h"]                                      # the two RMSNorms keep their fp32 input
    saved += 3 * act * s["inter"]                                # SwiGLU: gate, silu(gate), up
    if attention == "eager":
        # q and the head-repeated k and v; the fp32 softmax output and its cast for the value matmul.
        saved += 3 * act * s["q"] + s["heads"] * width * (4 + (act if act != 4 else 0))
    else:
        kv = s["q"] if repeated_kv else s["kv"]
        saved += act * (2 * s["q"] + 2 * kv) + 4 * s["heads"]   # q, k, v, out, log-sum-exp
    return saved


def layer_backward_bytes(s: dict, *, act: int, attention: str, width: int) -> int:
    """Gradients alive at once in one layer's backward, per token: SwiGLU's and, for eager, the scores'."""
    grads = act * (4 * s["inter"] + 2 * s["h"])
    if attention == "eager":
        grads += act * s["heads"] * width
    return grads


def load_peak(shards: list[tuple[int, int]] | None, weight_bytes: int, runtime: int, device: torch.device) -> int:
    """The RSS while load_text_model widens the weights on CPU: the shards' tensors converted so far plus the
    pages of the shard being converted, which stay mapped until its file closes. 0 where nothing is widened
    (bf16 on disk and wanted: the tensors are views of the mapped files) or on a GPU (whose counter sees no
    host pages).

    shards: train.pretrained.text_shards, (bytes on disk, elements) per file in load order.
    """
    if device.type != "cpu" or not shards:
        return 0
    peak = converted = 0
    for disk, numel in shards:
        if disk == numel * weight_bytes:
            continue
        converted += numel * weight_bytes
        peak = max(peak, runtime + converted + disk)
    return peak


def estimate(text_cfg, cfg, device: torch.device, *, width: int, runtime: int, embed_rows: int | None = None,
             world_size: int = 1, shards: list[tuple[int, int]] | None = None) -> Estimate:
    """The predicted peak of a run with these settings, `width` tokens per row (at most max_length).

    embed_rows: distinct token ids the run reads (CPU, memory-mapped bf16 weights), None for all of them.
    shards: the checkpoint's weight files (train.pretrained.text_shards), for the load peak; None: not counted.
    """
    s = _shape(text_cfg)
    act = 2 if cfg.precision == "bf16" else 4                   # activation and matmul dtype
    base = 2 if cfg.precision == "bf16" else 4                  # frozen weight dtype (train.device.base_dtype)
    attention, _ = choose_attention(cfg, text_cfg, device)
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    dropout = cfg.lora_dropout > 0
    # LoRA dropout keeps its mask: a bool on CUDA (fused dropout), the input's dtype on CPU (LaneMaskDropout's
    # keep-mask, or the scaled noise of torch's CPU dropout for a p too small for the lanes).
    mask = 0 if not dropout else (act if device.type == "cpu" else 1)
    tokens = cfg.micro_batch_size * width
    labels = cfg.micro_batch_size * max(1, width - 1)
    chunk = min(cfg.loss_chunk_size, labels)

    n_params = text_param_count(text_cfg)
    full = not getattr(cfg, "use_lora", True)   # full-parameter mode: every weight trains, in fp32
    n_train = n_params if full else lora_param_count(text_cfg, cfg.lora_r, targets)
    weights = 0 if full else n_params * base
    if not full and device.type == "cpu" and base == 2 and embed_rows is not None:
        weights -= (s["vocab"] - min(embed_rows, s["vocab"])) * s["h"] * base
    if cfg.fsdp and world_size > 1:
        # Shards of every layer and of the embedding; lm_head stays whole; a layer is gathered while it runs.
        layer = (weights - 2 * s["vocab"] * s["h"] * base) // max(1, s["layers"])
        weights = (weights - s["vocab"] * s["h"] * base) // world_size + s["vocab"] * s["h"] * base + 2 * layer
        n_train //= world_size

    lora_elems = _lora_inputs(s, targets, dropout, attention)
    per_layer = layer_saved_bytes(s, act=act, mask=mask, lora_elems=lora_elems, rank=cfg.lora_r,
                                  n_targets=len(targets), attention=attention, width=width,
                                  repeated_kv=bool(getattr(cfg, "share_prefix", False)))
    if cfg.gradient_checkpointing:
        stored = s["layers"] * tokens * act * s["h"]            # each layer's input
        recompute = tokens * per_layer                          # one layer rebuilt in backward
    else:
        stored = s["layers"] * tokens * per_layer
        recompute = 0
    # At the loss: the final norm's fp32 input, the gathered hidden states of labelled positions, the gradient
    # the loss keeps for them, and one chunk of logits (matmul dtype, fp32, and the probabilities cast back).
    logits = chunk * s["vocab"] * ((2 * act + 4) if act == 2 else 4)
    loss = tokens * 4 * s["h"] + labels * (act + 4) * s["h"] + logits
    if cfg.micro_batch_size > 1:
        loss += tokens * act * s["h"]                           # rows x (width - 1) positions, gathered
    backward = recompute + tokens * layer_backward_bytes(s, act=act, attention=attention, width=width)
    # fp32 weight, gradient and two AdamW moments, plus the bf16 copy autocast caches during a forward pass.
    adapters = n_train * (16 + (2 if act == 2 else 0))
    parts = {"runtime": runtime, "frozen_weights": weights, "adapters": adapters,
             "activations": stored, "step_transient": max(loss, backward)}
    # Every process reads the whole model before any sharding; full-parameter weights load in fp32.
    loading = load_peak(shards, 4 if full else base, runtime, device)
    return Estimate(cfg.gradient_checkpointing, attention, cfg.micro_batch_size, cfg.max_length, parts, loading)


# ----------------------------------------------------------------------------------------- budget


def _proc_bytes(path: str, field: str) -> int | None:
    """A `field:  N kB` line of a /proc file, in bytes; None where /proc has no such file."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit (a container's), None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def current_rss() -> int:
    rss = _proc_bytes("/proc/self/status", "VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_memory(device: torch.device, local_processes: int = 1) -> tuple[int | None, str]:
    """(bytes this process may use, where the figure comes from)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device} ({total / GiB:.1f} GiB card)"
    room = [x for x in (_proc_bytes("/proc/meminfo", "MemAvailable"), _cgroup_room()) if x is not None]
    if not room:
        return None, "available RAM unknown on this system"
    source = "MemAvailable" + (" and the cgroup limit" if len(room) > 1 else "")
    share = f", shared by {local_processes} processes" if local_processes > 1 else ""
    return current_rss() + min(room) // local_processes, f"this process's RSS + {source}{share}"


def parse_budget(text: str) -> float | None:
    """GiB from --memory-budget N; None for auto/off. ValueError for anything else."""
    if text in ("auto", "off"):
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


# ------------------------------------------------------------------------------------------- plan


def reserve_bytes(device: torch.device, world_size: int = 1) -> int:
    """What a process keeps free on its device besides HEADROOM: CUDA_RESERVE, plus NCCL_RESERVE under torchrun."""
    if device.type != "cuda":
        return 0
    return CUDA_RESERVE + (NCCL_RESERVE if world_size > 1 else 0)


def usable(budget: int, reserve: int = 0) -> float:
    """The part of a budget a run's predicted peak may take."""
    return budget * (1 - HEADROOM) - reserve


def _fits(e: Estimate, budget: int | None, reserve: int = 0) -> bool:
    return budget is None or e.peak <= usable(budget, reserve)


def _what_would_fit(text_cfg, cfg, device, width, runtime, embed_rows, world, budget, shards) -> list[str]:
    """Smaller settings that fit, for the error message: checkpointing, micro-batch, max length."""
    def est(**kw):
        c = dataclasses.replace(cfg, gradient_checkpointing=True, **kw)
        return estimate(text_cfg, c, device, width=min(width, c.max_length), runtime=runtime,
                        embed_rows=embed_rows, world_size=world, shards=shards)

    reserve = reserve_bytes(device, world)
    found = []
    for mb in range(cfg.micro_batch_size - 1, 0, -1):
        e = est(micro_batch_size=mb)
        if _fits(e, budget, reserve):
            found.append(f"--gradient-checkpointing --micro-batch-size {mb} ({e.peak / GiB:.1f} GiB)")
            break
    length = cfg.max_length
    while length > 128:
        length //= 2
        e = est(micro_batch_size=1, max_length=length)
        if _fits(e, budget, reserve):
            found.append(f"--gradient-checkpointing --micro-batch-size 1 --max-length {length} "
                         f"({e.peak / GiB:.1f} GiB)")
            break
    chunk = est(micro_batch_size=1, max_length=min(cfg.max_length, 1024), loss_chunk_size=256)
    if not found and _fits(chunk, budget, reserve):
        found.append(f"--gradient-checkpointing --micro-batch-size 1 --max-length {chunk.max_length} "
                     f"--loss-chunk-size 256 ({chunk.peak / GiB:.1f} GiB)")
    return found


def runtime_bytes(device: torch.device) -> int:
    """What the process holds before the model: its RSS on CPU, the bytes allocated so far on CUDA."""
    if device.type == "cpu":
        return current_rss()
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def plan(cfg, text_cfg, device: torch.device, *, width: int, embed_rows: int | None, world_size: int = 1,
         local_processes: int = 1, runtime: int | None = None,
         shards: list[tuple[int, int]] | None = None) -> MemoryPlan:
    """Predict, choose and (with a budget) refuse, before any weight is loaded. Does not change cfg: the
    caller applies plan.changed. shards: train.pretrained.text_shards of the checkpoint (the load peak)."""
    runtime = runtime_bytes(device) if runtime is None else runtime
    args = dict(width=width, runtime=runtime, embed_rows=embed_rows, world_size=world_size, shards=shards)
    given = estimate(text_cfg, cfg, device, **args)
    if cfg.memory_budget == "off":
        return MemoryPlan("off", str(device), None, "--memory-budget off: predicted, not enforced", given, [given])
    gib = parse_budget(cfg.memory_budget)
    if gib is not None:
        budget, source = int(gib * GiB), f"--memory-budget {cfg.memory_budget}"
    else:
        budget, source = free_memory(device, local_processes)
    reserve = reserve_bytes(device, world_size)
    considered = [given]
    if _fits(given, budget, reserve):
        return MemoryPlan(cfg.memory_budget, str(device), budget, source, given, considered, reserve=reserve)
    if not cfg.gradient_checkpointing:
        # share_prefix cannot run under checkpointing (train.config.validate_args), so it goes off with it.
        changes = {"gradient_checkpointing": True} | ({"share_prefix": False} if cfg.share_prefix else {})
        ckpt = estimate(text_cfg, dataclasses.replace(cfg, **changes), device, **args)
        considered.append(ckpt)
        if _fits(ckpt, budget, reserve):
            return MemoryPlan(cfg.memory_budget, str(device), budget, source, ckpt, considered, changes, reserve)
    best = considered[-1]
    options = _what_would_fit(text_cfg, cfg, device, width, runtime, embed_rows, world_size, budget, shards)
    kept = f" and {reserve / GiB:.1f} GiB reserved" if reserve else ""
    raise MemoryPlanError(
        f"memory plan: this run needs an estimated {best.peak / GiB:.2f} GiB even with activation checkpointing "
        f"({best.describe()}), more than {usable(budget, reserve) / GiB:.2f} GiB of the {budget / GiB:.2f} GiB "
        f"budget ({source}; {HEADROOM:.0%} headroom{kept}). "
        + (f"What would fit: {'; or '.join(options)}. " if options else
           f"No smaller micro-batch or length fits: the frozen weights alone take {best.parts['frozen_weights'] / GiB:.1f}"
           f" GiB{f' and loading peaks at {best.load_peak / GiB:.1f} GiB' if best.load_peak else ''}; use a device "
           "with more memory, or --fsdp across several. ")
        + "--memory-budget off runs the flags as given without this check (docs/troubleshooting.md#out-of-memory)")


def embed_rows_read(rows) -> int:
    """Distinct token ids in the rows: the embedding rows a run reads."""
    seen = set()
    for r in rows:
        seen.update(r.input_ids)
    return len(seen)


def local_processes() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
