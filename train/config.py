"""The training configuration: one dataclass whose defaults are the recipe, and the checks that reject
combinations the loop does not support before anything expensive happens."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from contract.errors import UserError
from train.pretrained import LINEAR_PROJECTIONS

# Where the project lives, and its default paths relative to it (run.sh works from the project root).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = "models/Ministral-3-8B-Thinking"   # where a user puts the downloaded checkpoint
DEFAULT_TEMPLATE_PATH = "templates/mistral3_chat_template_assistant_mask.jinja"


def _opt(default, help: str, **kw):
    """A field with its --help text; `choices` restricts the values, `group` files it under a --help heading,
    `const` is the value of the bare flag when it may also take one."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    phase: str = _opt(None, "dapt (causal LM on raw text) or sft (chat, assistant-only loss)", choices=("dapt", "sft"))
    model_path: str = _opt(DEFAULT_MODEL_PATH, "Hugging Face folder of the base model (VLM or text-only Ministral 3)")
    dapt_dir: str = _opt("data/processed/dapt", "folder with DAPT train.jsonl / validation.jsonl")
    sft_dir: str = _opt("data/processed/sft", "folder with SFT train.jsonl / validation.jsonl")
    output_dir: str = _opt(None, "run folder for adapter, logs and checkpoints (default models/fine-tuned-<phase>)")
    base_adapter: str = _opt(None, "adapter merged into the base weights before training (SFT on top of DAPT)")
    precision: str = _opt("bf16", "bf16 autocast with frozen bf16 base weights, or fp32", choices=("bf16", "fp32", "fp16"))
    use_lora: bool = _opt(True, "train LoRA adapters on the frozen base; --no-use-lora trains every weight of the "
                          "text model in fp32 instead (full-parameter: how the stand-in model is pretrained, not "
                          "part of the fine-tuning recipe)")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    lora_targets: str = _opt(",".join(LINEAR_PROJECTIONS), "language-model projections that get adapters (comma list)")
    max_length: int = _opt(2048, "tokens per row (SFT) or per packed block (DAPT)")
    micro_batch_size: int = _opt(2, "rows per forward/backward")
    grad_accum: int = _opt(16, "micro-batches per optimizer step (per process)")
    lr: float = _opt(2e-5, "peak learning rate")
    epochs: int = _opt(3, "passes over the training split")
    max_steps: int = _opt(None, "stop after this many optimizer steps (overrides epochs)")
    warmup_ratio: float = _opt(0.03, "share of optimizer steps spent in linear warm-up")
    min_lr_ratio: float = _opt(0.1, "cosine decays to lr * min_lr_ratio, not to zero")
    weight_decay: float = _opt(0.0, "AdamW weight decay on LoRA weights")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this value (0 = off)")
    assistant_only_loss: bool = _opt(None, "SFT: supervise only the template's generation spans (default on for SFT)")
    strict_assistant_only_loss: bool = _opt(True, "SFT: fail before training on any masking finding")
    chat_template_path: str = _opt(DEFAULT_TEMPLATE_PATH, "training chat template with {% generation %} blocks")
    packing: bool = _opt(None, "pack rows into max-length blocks (default on for DAPT, must be off for SFT)")
    drop_overlong: bool = _opt(False, "SFT: drop (and count) conversations that do not fit max_length")
    group_by_length: bool = _opt(True, "SFT: batch rows of similar length together to cut padding")
    share_prefix: bool = _opt(None, "SFT: run the prompt prefix all rows of a micro-batch share (the system "
                              "prompt) once for the whole micro-batch (default on for SFT on a CPU, off on a GPU, "
                              "and off under --gradient-checkpointing or --fsdp)")
    eval_interval: int = _opt(50, "evaluate on the validation split every N optimizer steps (and at the end)")
    eval_max_batches: int = _opt(None, "cap on validation micro-batches per evaluation (None = whole split)")
    save_interval: int = _opt(100, "write a checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = _opt(3, "how many recent checkpoints to keep")
    log_interval: int = _opt(1, "metrics/log line every N optimizer steps")
    max_consecutive_skips: int = _opt(3, "abort after more than this many non-finite steps in a row")
    allow_empty_validation: bool = _opt(False, "train even when the validation split has no rows (no validation "
                                        "loss, no eval-based divergence signal); warned and recorded in "
                                        "training_args.json")
    abort_on_divergence: bool = _opt(False, "stop with a checkpoint (exit 1) when a divergence signal fires instead "
                                     "of only warning")
    divergence_spike_factor: float = _opt(3.0, "divergence signal: a step's loss above this many times the median of "
                                          "the recent steps' losses (see train/divergence.py)")
    divergence_eval_rises: int = _opt(3, "divergence signal: the validation loss rose this many evaluations in a "
                                      "row (0 = off)")
    report_to: str = _opt("none", "also log the metrics to TensorBoard in output_dir/tensorboard (needs the "
                          "tensorboard package, which is not a runtime requirement)", choices=("none", "tensorboard"))
    merge: bool = _opt(False, "also export output_dir/merged: base + adapters folded, loadable by transformers alone")
    seed: int = _opt(42, "seed for data order, LoRA init and dropout")
    resume: str = _opt(None, "continue from the newest complete checkpoint in output_dir; `--resume auto` does "
                       "the same when one exists and starts fresh quietly when none does (for restart loops)",
                       choices=("on", "auto"), const="on")
    gradient_checkpointing: bool = _opt(False, "recompute activations in backward (less memory, ~1/3 more compute)")
    loss_chunk_size: int = _opt(1024, "label positions per LM-head chunk in the memory-lean loss")
    attention: str = _opt("auto", "attention kernel: sdpa, eager, or auto (eager on CPU while its saved score "
                          "matrices stay small, sdpa otherwise; see docs/performance.md)",
                          choices=("auto", "sdpa", "eager"))
    compile: bool = _opt(False, "torch.compile the model's decoder layers")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto (a model above 1 B parameters never falls back to the "
                       "CPU by itself: with no usable GPU, auto stops and says why; pass --device cpu to insist)")
    memory_budget: str = _opt("auto", "memory plan: auto (the GPU's free memory, or the available RAM on CPU), a "
                              "number of GiB, or off. Before loading, the run's peak is predicted; with a budget the "
                              "fastest setting that fits is chosen (as given, then --gradient-checkpointing) or the "
                              "run stops naming what would fit (docs/performance.md)")
    fsdp: bool = _opt(False, "under torchrun: shard the base model and the adapters across the processes with FSDP2 "
                      "(for a base model that does not fit one device)")
    profile_steps: str = _opt(None, "A:B - write a torch profiler trace for optimizer steps A..B",
                              group="debugging")
    detect_anomaly: bool = _opt(False, "torch.autograd anomaly detection (slow; names the op that made a NaN)",
                                group="debugging")
    deterministic: bool = _opt(False, "torch deterministic algorithms (bitwise-repeatable GPU runs, slower)",
                               group="debugging")
    debug_nan_steps: str = _opt(None, "testing aid: comma list of optimizer steps whose loss is made NaN",
                                group="debugging")
    debug_spike_steps: str = _opt(None, "testing aid: comma list of optimizer steps whose loss (and so gradient) "
                                  "is multiplied by 10, an injected divergence spike", group="debugging")
    stop_after_steps: int = _opt(None, "leave the loop after N steps as if interrupted (no final artifacts; "
                                 "--resume goes on)", group="debugging")

    def resolve(self) -> "TrainConfig":
        """Fill the phase-dependent defaults (the recipe differs between DAPT and SFT)."""
        if self.output_dir is None:
            self.output_dir = f"models/fine-tuned-{self.phase}"
        if self.packing is None:
            self.packing = self.phase == "dapt"
        if self.assistant_only_loss is None:
            self.assistant_only_loss = self.phase == "sft"
        if self.share_prefix is None:
            # On a GPU the rows attend to the prefix's cache through an explicit mask, which costs SDPA its fused
            # kernel and repeats K/V to every head: off there until a GPU A/B shows it pays (docs/performance.md).
            self.share_prefix = (self.phase == "sft" and not self.gradient_checkpointing and not self.fsdp
                                 and not self.on_cuda)
        return self

    @property
    def on_cuda(self) -> bool:
        """Whether --device resolves to a GPU (auto: when torch sees one)."""
        if self.device == "auto":
            import torch
            return torch.cuda.is_available()
        return self.device.startswith("cuda")

    @property
    def data_dir(self) -> str:
        return self.dapt_dir if self.phase == "dapt" else self.sft_dir


class ConfigError(UserError):
    """A flag or a combination of flags the loop does not support."""


def validate_args(cfg: TrainConfig, cuda_available: bool) -> None:
    """Reject unsupported combinations up front, with the flag to change."""
    errors = []
    if cfg.phase not in ("dapt", "sft"):
        errors.append("--phase must be dapt or sft")
    if not cfg.use_lora and cfg.fsdp:
        errors.append("--no-use-lora with --fsdp: full-parameter training is meant for models that fit one device "
                      "(the stand-in's pretraining); drop --fsdp")
    if not cfg.use_lora and cfg.merge:
        errors.append("--no-use-lora with --merge: a full-parameter run already writes the whole model; drop --merge")
    if cfg.phase == "sft" and cfg.packing:
        errors.append("--packing with --phase sft: packing mixes conversations in one row and breaks "
                      "assistant-only masking; use --no-packing")
    if cfg.phase == "dapt" and cfg.assistant_only_loss:
        errors.append("--assistant-only-loss with --phase dapt: DAPT trains on every token of raw text")
    if cfg.phase == "sft" and cfg.assistant_only_loss:
        tpl = Path(cfg.chat_template_path)
        if not tpl.is_file():
            errors.append(f"--chat-template-path {tpl}: file not found")
        else:
            from train.masking import has_generation_blocks
            if not has_generation_blocks(tpl.read_text(encoding="utf-8")):
                errors.append(f"--assistant-only-loss needs {{% generation %}} blocks, and {tpl} has none: "
                              "labels would cover nothing (or everything)")
    if cfg.phase == "sft" and cfg.strict_assistant_only_loss and not cfg.assistant_only_loss:
        errors.append("--strict-assistant-only-loss needs --assistant-only-loss")
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda_available else "cpu")
    if cfg.precision == "fp16" and not device.startswith("cuda"):
        errors.append("--precision fp16 on CPU: fp16 autocast needs a GPU; use bf16 or fp32")
    elif cfg.precision == "fp16":
        errors.append("--precision fp16 is not supported: it needs loss scaling, and Ministral 3 ships bf16 weights; "
                      "use bf16")
    if device.startswith("cuda") and not cuda_available:
        errors.append(f"--device {cfg.device}: CUDA is not available on this machine")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.startswith("cuda:") and world > 1:
        # The process group binds each process to cuda:LOCAL_RANK (train/distributed.py); a fixed index would
        # put every process on one GPU while NCCL expects them on different ones.
        index, local_rank = device.split(":", 1)[1], os.environ.get("LOCAL_RANK", "0")
        if index != local_rank:
            errors.append(f"--device {cfg.device} with WORLD_SIZE={world}: this process is LOCAL_RANK={local_rank} and "
                          f"must use cuda:{local_rank}; pass --device cuda (or auto) and let torchrun place each "
                          "process on its own GPU (CUDA_VISIBLE_DEVICES chooses which GPUs)")
    if cfg.fsdp:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world < 2:
            errors.append(f"--fsdp needs torchrun with at least 2 processes (WORLD_SIZE={world} here): FSDP2 shards "
                          "the model across processes; launch with `torchrun --nproc_per_node=N train/main.py ...` "
                          "or drop --fsdp")
        if cfg.compile:
            errors.append("--compile with --fsdp: compiling FSDP2-wrapped layers is not supported by this loop; "
                          "use --no-compile")
        if cfg.share_prefix:
            # The prefix runs as its own forward call through every layer, and FSDP2 frees a layer's gathered
            # weights after its backward for the suffix call while the prefix call's backward still needs them
            # (the backward fails with "setStorage: ... out of bounds"). Micro-batches with and without a
            # shared prefix (1-row batches have none) would also run different numbers of collectives.
            errors.append("--share-prefix with --fsdp: the shared-prefix key/value cache path runs each layer twice "
                          "per micro-batch, which FSDP2's per-layer gather/free does not support; use --no-share-prefix")
    if cfg.share_prefix and cfg.gradient_checkpointing:
        errors.append("--share-prefix with --gradient-checkpointing: transformers' checkpointed layers drop the "
                      "key/value cache the rows read the shared prefix from; use --no-share-prefix")
    if cfg.phase == "dapt" and cfg.packing is False:
        errors.append("--no-packing with --phase dapt: DAPT always packs documents into max-length blocks")
    for name in ("max_length", "micro_batch_size", "grad_accum", "epochs", "eval_interval", "save_interval",
                 "keep_checkpoints", "log_interval", "loss_chunk_size", "lora_r"):
        if getattr(cfg, name) < 1:
            errors.append(f"--{name.replace('_', '-')} must be >= 1")
    try:
        from train.pretrained import lora_target_regex
        lora_target_regex(cfg.lora_targets)
    except ValueError as e:
        errors.append(str(e))
    try:
        from train.memory_plan import parse_budget
        parse_budget(cfg.memory_budget)
    except ValueError:
        errors.append(f"--memory-budget {cfg.memory_budget}: must be auto, off or a number of GiB > 0")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        errors.append("--max-steps must be >= 1")
    if not 0 <= cfg.warmup_ratio < 1:
        errors.append("--warmup-ratio must be in [0, 1)")
    if cfg.lr <= 0:
        errors.append("--lr must be > 0")
    if cfg.divergence_spike_factor <= 1:
        errors.append("--divergence-spike-factor must be > 1")
    if cfg.divergence_eval_rises < 0:
        errors.append("--divergence-eval-rises must be >= 0")
    for name in ("debug_nan_steps", "debug_spike_steps"):
        value = getattr(cfg, name)
        if value is not None and not all(x.strip().isdigit() for x in value.split(",")):
            errors.append(f"--{name.replace('_', '-')} must be a comma list of step numbers")
    if cfg.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        errors.append("--report-to tensorboard needs the tensorboard package, which is not a runtime requirement: "
                      "`.venv/bin/pip install tensorboard`, or drop the flag")
    if cfg.profile_steps is not None:
        try:
            a, b = (int(x) for x in cfg.profile_steps.split(":"))
            assert 1 <= a <= b
        except (ValueError, AssertionError):
            errors.append("--profile-steps must look like A:B with 1 <= A <= B")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.main", description="DAPT / SFT LoRA fine-tuning of Ministral 3 "
                                 "(plain PyTorch loop). Defaults are the recipe.")
    groups = {"debugging": ap.add_argument_group("debugging options", "aids for finding a numerical or performance "
                                                  "problem; none is needed for a normal run")}
    for f in dataclasses.fields(TrainConfig):
        target = groups.get(f.metadata.get("group"), ap)
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        kw = {"help": text.replace("%", "%%")}  # argparse formats help strings with %
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.type in ("bool", bool):
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, **kw)
        elif "const" in f.metadata:
            # A flag that works bare (--resume) or with a value (--resume auto), and has a --no- form.
            target.add_argument(flag, nargs="?", const=f.metadata["const"], default=f.default, **kw)
            target.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=None,
                                help=f"turn {flag} off")
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            target.add_argument(flag, type=typ, default=f.default, required=f.name == "phase", **kw)
    # The seed playbook spells the LoRA switch --use-lora and packing off as --no-packing; both are above.
    return ap


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ns = build_parser().parse_args(argv)
    return TrainConfig(**vars(ns)).resolve()
