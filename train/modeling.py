"""The model the loop trains: base text model (frozen), optional earlier adapter merged in, fresh LoRA."""
from __future__ import annotations


import torch

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


def build_model(cfg, device: torch.device, log):
    from peft import LoraConfig, PeftModel, get_peft_model

    # Frozen base weights stay bf16 under bf16 autocast (half the memory, no per-step casts);
    # fp32 is the reference-precision mode.
    base_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = load_text_model(cfg.model_path, dtype=base_dtype, device=device)
    if cfg.base_adapter:
        # SFT on top of DAPT: fold the DAPT adapter into the base weights, then train a fresh adapter.
        log(f"merging base adapter {cfg.base_adapter} into the base weights")
        model = PeftModel.from_pretrained(model, cfg.base_adapter).merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=lora_target_regex(cfg.lora_targets))
    model = get_peft_model(model, lora)
    # Adapters train in fp32 whatever the base dtype: their updates are tiny relative to the weights and
    # bf16 would round many of them away.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.base_model.model.config.use_cache = False
    if cfg.compile:
        for layer in model.base_model.model.model.layers:
            layer.compile()
    return model


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def causal_lm(model):
    """The Ministral3ForCausalLM inside the PeftModel (LoRA layers are injected in place)."""
    return model.base_model.model
