"""The model the loop trains: base text model (frozen), optional earlier adapter merged in, fresh LoRA."""
from __future__ import annotations


import torch

from train.lora_dropout import use_lane_mask_dropout
from train.model_loading import LORA_TARGET_REGEX, load_text_model


def lora_target_regex(targets: str) -> str:
    """LORA_TARGET_REGEX narrowed to the requested projection names (still language-model only)."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    attn = [n for n in names if n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    mlp = [n for n in names if n in ("gate_proj", "up_proj", "down_proj")]
    unknown = sorted(set(names) - set(attn) - set(mlp))
    if unknown:
        raise ValueError(f"--lora-targets: unknown projection(s) {unknown}; choose from q/k/v/o_proj, gate/up/down_proj")
    parts = ([f"self_attn\\.(?:{'|'.join(attn)})"] if attn else []) + ([f"mlp\\.(?:{'|'.join(mlp)})"] if mlp else [])
    return LORA_TARGET_REGEX.split("(?:self_attn")[0] + f"(?:{'|'.join(parts)})$"


# Eager attention keeps each layer's probabilities for backward: fp32 from the softmax, plus the bf16 copy
# the value matmul saves. Auto stays under this many bytes of them (all layers, a whole micro-batch).
EAGER_SAVED_SCORES_BUDGET = 2 * 2**30


def choose_attention(cfg, text_config, device: torch.device) -> tuple[str, str]:
    """The attention implementation for this run and why, from --attention, the device and the shapes.

    On CPU, SDPA's bf16 flash kernel runs every 32 x 64 block product as its own oneDNN matmul call (tens of
    thousands per step at the CPU bench's shapes, each with a primitive-cache lookup), and its backward is
    slower than eager attention's three batched ops: measured 1.7-2.6x at 128-450 tokens, +13-14% on the
    whole bench step (docs/performance.md). The price is memory (eager saves the score matrices, quadratic in
    length) and rounding (scores are rounded to bf16 before the fp32 softmax: 0.8-1.0% relative output error
    in bf16 against SDPA's 0.5%).
    So auto picks eager on CPU only while the saved scores fit EAGER_SAVED_SCORES_BUDGET; on a GPU SDPA's
    fused kernels are both faster and leaner.
    """
    if cfg.attention != "auto":
        return cfg.attention, f"--attention {cfg.attention}"
    if device.type != "cpu":
        return "sdpa", f"auto: fused SDPA kernels on {device.type}"
    bytes_per_score = 6 if cfg.precision == "bf16" else 4
    saved = (text_config.num_hidden_layers * cfg.micro_batch_size * text_config.num_attention_heads
             * cfg.max_length ** 2 * bytes_per_score)
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


def build_model(cfg, device: torch.device, log, mesh=None):
    """The LoRA model on `device`; with a DeviceMesh (--fsdp) it comes back sharded over the mesh."""
    from peft import PeftModel

    # Frozen base weights stay bf16 under bf16 autocast (half the memory, no per-step casts);
    # fp32 is the reference-precision mode.
    base_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    # Under FSDP the whole model is read into host memory first and fully_shard moves only this process's
    # shards to the device, layer by layer: the point of --fsdp is a model that does not fit one device.
    load_device = torch.device("cpu") if mesh is not None else device
    model = load_text_model(cfg.model_path, dtype=base_dtype, device=load_device)
    log(f"attention: {set_attention(model, cfg, device)}")
    if cfg.base_adapter:
        # SFT on top of DAPT: fold the DAPT adapter into the base weights, then train a fresh adapter.
        log(f"merging base adapter {cfg.base_adapter} into the base weights")
        model = PeftModel.from_pretrained(model, cfg.base_adapter).merge_and_unload()
    model = attach_lora(model, cfg)
    if mesh is not None:
        shard_model(model, mesh, device)
    return model


def attach_lora(model, cfg):
    """Freeze `model` and wrap it in fresh LoRA adapters as the config asks (shared by the loop and the bench)."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=lora_target_regex(cfg.lora_targets))
    # peft draws the LoRA A matrices from the global RNG. Loading a base adapter draws from it too (its
    # layers are initialised before the saved weights overwrite them), so without this re-seed the same
    # --seed would give a different adapter init depending on whether --base-adapter was given.
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lora)
    # Adapters train in fp32 whatever the base dtype: their updates are tiny relative to the weights and
    # bf16 would round many of them away.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    # peft casts each adapted layer's input to the adapter's dtype before the adapter runs. Under bf16
    # autocast that is a bf16 -> fp32 copy of the activations per adapted projection (seven per layer),
    # with the dropout mask drawn on the fp32 copy, only for autocast to cast it back to bf16 for the
    # matmul. Measured on the CPU bench: a twentieth of the step in copies. Autocast already gives the
    # adapter matmuls matching dtypes, and in fp32 the input is fp32 anyway, so the cast is switched off.
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
    # peft's nn.Dropout masks cost 15% of a CPU bench step through torch's element-by-element bernoulli_;
    # the replacement draws the same kind of independent masks from 64-bit random words (train/lora_dropout.py).
    use_lane_mask_dropout(model)
    if cfg.gradient_checkpointing:
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.base_model.model.config.use_cache = False
    if cfg.compile:
        compile_layers(model)
    return model


def compile_layers(model) -> None:
    # Per decoder layer rather than the whole model: the layers share graphs (same code, parameters are
    # graph inputs), compile time stays flat in depth, and the labels-only loss outside stays eager.
    # dynamic=True: rows vary in length, and specialising on the first length only to recompile on the
    # second costs minutes on a CPU. The limit counts graphs per call signature, not per layer (layer 0's
    # input needs no grad and the others' does; train, eval and the shared-prefix calls differ too), and
    # past it dynamo quietly runs everything eager: measured, the 8-layer bench hit the default 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in model.base_model.model.model.layers:
        layer.compile(dynamic=True)


def shard_model(model, mesh, device: torch.device):
    """FSDP2 over `mesh`: one shard group per decoder layer, then the decoder as the root group.

    The root is the decoder (Ministral3Model), not the PeftModel or the CausalLM around it, because that is
    the outermost module whose forward runs: train/loss.py calls the decoder directly and reads
    lm_head.weight for its chunked cross-entropy. FSDP2 gathers a group's weights in its module's forward
    pre-hook, so a head wrapped on its own would never be gathered. lm_head therefore stays whole on every
    process (frozen: no gradient to reduce; vocab x hidden, 1 GiB in bf16 at 8B size).

    No MixedPrecisionPolicy: FSDP2 all-gathers each parameter in its own dtype, so the base stays bf16 and
    the adapters fp32 under the same autocast as without FSDP, and the only gradients (the adapters') are
    reduced in fp32.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    lm = causal_lm(model)
    for layer in lm.model.layers:
        fully_shard(layer, mesh=mesh)
    # With tied embeddings lm_head.weight *is* embed_tokens.weight, inside the root: it must stay whole for
    # the same reason. (Untied, it is outside the decoder and this is a no-op.)
    fully_shard(lm.model, mesh=mesh, ignored_params={lm.lm_head.weight})
    lm.lm_head.to(device)
    for m in lm.model.modules():
        if isinstance(m, FSDPModule):
            # The loop divides the loss by the global supervised-token count, so the gradient is the *sum*
            # over processes (as in distributed.all_reduce_grads), not FSDP's default mean. A custom divide
            # factor alone would make FSDP2 reduce with PREMUL_SUM, which gloo (CPU) rejects; forcing
            # SUM-only collectives gives a plain SUM, and a factor of 1 adds no scaling step.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return lm.model


def fsdp_root(model):
    """The module fully_shard made the root (set_requires_gradient_sync goes there), or None."""
    from torch.distributed.fsdp import FSDPModule

    root = causal_lm(model).model
    return root if isinstance(root, FSDPModule) else None


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def causal_lm(model):
    """The Ministral3ForCausalLM inside the PeftModel (LoRA layers are injected in place)."""
    return model.base_model.model
