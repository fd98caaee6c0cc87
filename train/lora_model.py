"""The model the loop trains: the base text model (frozen), an earlier adapter merged in, fresh LoRA adapters;
optionally sharded with FSDP2. With --no-use-lora: the whole text model, every weight trainable in fp32."""
from __future__ import annotations

import torch

from train.attention import set_attention
from train.device import base_dtype
from train.lora_dropout import use_lane_mask_dropout
from train.pretrained import load_text_model, lora_target_regex


def build_model(cfg, device: torch.device, log, mesh=None):
    """The LoRA model on `device`; with a DeviceMesh (--fsdp) it comes back sharded over the mesh."""
    from peft import PeftModel

    # Under FSDP the whole model is read into host memory first and fully_shard moves only this process's
    # shards to the device, layer by layer: the point of --fsdp is a model that does not fit one device.
    load_device = torch.device("cpu") if mesh is not None else device
    # Full-parameter weights are the optimizer's master copy: fp32, as the adapters are (autocast still runs
    # the matmuls in bf16).
    dtype = base_dtype(cfg.precision) if cfg.use_lora else torch.float32
    model = load_text_model(cfg.model_path, dtype=dtype, device=load_device)
    log(f"attention: {set_attention(model, cfg, device)}")
    if cfg.base_adapter:
        # SFT on top of DAPT: fold the DAPT adapter into the base weights, then train a fresh adapter.
        log(f"merging base adapter {cfg.base_adapter} into the base weights")
        model = PeftModel.from_pretrained(model, cfg.base_adapter).merge_and_unload()
    model = attach_lora(model, cfg) if cfg.use_lora else all_weights_trainable(model, cfg)
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
    # autocast that is a bf16 -> fp32 copy of the activations per adapted projection, only for autocast to
    # cast it back to bf16 for the matmul. Autocast already gives the adapter matmuls matching dtypes, and
    # in fp32 the input is fp32 anyway, so the cast is switched off.
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
    # On a CPU peft's nn.Dropout draws its masks with torch's one-thread bernoulli_; the replacement draws the
    # same kind of independent masks from 64-bit random words (train/lora_dropout.py).
    use_lane_mask_dropout(model)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model.base_model.model)
    model.base_model.model.config.use_cache = False
    if cfg.compile:
        compile_layers(model, cfg.phase)
    return model


def all_weights_trainable(model, cfg):
    """--no-use-lora: the text model itself, every weight trainable (the stand-in's pretraining)."""
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.config.use_cache = False
    if cfg.compile:
        compile_layers(model, cfg.phase)
    return model


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of every decoder layer. Recent transformers 5 releases call it
    activation_checkpointing_enable and warn on the old name; earlier ones have the old name only."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_layers(model, phase: str = "sft") -> None:
    """torch.compile each decoder layer: static shapes for DAPT, whose blocks all have one length; for SFT only the
    sequence dimension is dynamic, so rows of every length share one graph and nothing else is left symbolic."""
    # Per decoder layer rather than the whole model: the layers share graphs (same code, parameters are
    # graph inputs), compile time stays flat in depth, and the labels-only loss outside stays eager.
    # The limit counts graphs per call signature, not per layer (layer 0's input needs no grad and the others'
    # does; train, eval and the shared-prefix calls differ too), and past it dynamo quietly runs everything
    # eager, which a deep model reaches with the default of 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in causal_lm(model).model.layers:
        if phase == "dapt":
            layer.compile(dynamic=False)
            continue
        # The forward is compiled, not the module's call, so that this pre-hook runs eagerly and can mark the
        # inputs' sequence dimensions dynamic before dynamo sees them; marked inside the graph they would be
        # specialised to the first length like every other dimension.
        layer.register_forward_pre_hook(mark_sequence_dynamic, with_kwargs=True)
        layer.forward = torch.compile(layer.forward, dynamic=None)


def mark_sequence_dynamic(module, args, kwargs):
    """Mark the sequence dimensions of a decoder layer's inputs dynamic: dimension 1 of the hidden states, of the
    rotary cos/sin and of the positions, and the last two of a 4-D attention mask (query and key length, which a
    shared prefix makes differ)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    seq = hidden.shape[1]
    for value in (*args, *kwargs.values()):
        for t in (value if isinstance(value, (tuple, list)) else (value,)):
            if not torch.is_tensor(t) or t.dim() < 2:
                continue
            dims = (t.dim() - 2, t.dim() - 1) if t.dim() == 4 else [d for d in range(1, t.dim()) if t.shape[d] == seq]
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(t, d)
    return None


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
    """The Ministral3ForCausalLM inside the PeftModel (LoRA layers are injected in place), or the model itself
    when it is trained without LoRA."""
    return model.base_model.model if hasattr(model, "peft_config") else model
