"""DAPT and SFT LoRA fine-tuning of Ministral 3 in one plain PyTorch loop.

    ./run.sh --phase sft --model-path M --sft-dir D --output-dir O ...        (one process)
    torchrun --nproc_per_node=N train/main.py --phase sft ...                   (N processes, same flags)
    torchrun --nproc_per_node=N train/main.py --phase sft --fsdp ...            (N processes, model sharded)

Read top to bottom: setup() builds everything and fails early; fit() is the loop; evaluate() is the
validation pass; finish() writes the artifacts. Everything that is not the loop lives in a small module
named for what it does (batching, loss, checkpointing, distributed, masking, lora_model, ...); the
command-line tools that the loop never imports live in train/tools/ (docs/architecture.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `torchrun train/main.py` puts train/ first on sys.path; swap it for the project root so `train.*`
    # imports resolve and no module in train/ can shadow a standard-library one.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import dataclasses
import json
import math
import os
import platform
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from contract.errors import UserError
from train import checkpointing, distributed, forensics, memory_plan, report
from train.batching import Row, collate, epoch_plan, pack_documents, read_jsonl, to_device
from train.checkpointing import sha256_file
from train.config import ConfigError, TrainConfig, parse_args, validate_args
from train.device import (autocast, expandable_cuda_segments, flush_denormals, note_emulated_bf16, peak_memory_mib,
                          peak_reserved_mib, refuse_silent_cpu, resolve_device, steady_cpu_allocator)
from train.divergence import DivergenceWatch
from train.export import export_merged, export_vlm_adapter
from train.flops import labels_only_step_flops, measure_matmul_peak, mfu_peak, model_flops_per_token
from train.lora_model import build_model, causal_lm, fsdp_root, trainable_parameters
from train.loss import labels_only_loss_sum
from train.preemption import EXIT_STOPPED, RunStopped, StopSignals
from train.pretrained import load_tokenizer, read_text_config, text_shards
from train.profiling import StepProfiler
from train.run_log import RunLog
from train.state import LoopState, Run


class TrainingAborted(UserError):
    """Too many non-finite steps in a row; the last good weights are in a checkpoint."""


class TrainingDiverged(UserError):
    """A divergence signal under --abort-on-divergence; the weights are in a checkpoint."""


# ------------------------------------------------------------------------------------------- setup

def load_rows(cfg: TrainConfig, tokenizer, log: RunLog, is_main: bool) -> tuple[list[Row], list[Row], dict]:
    """Training and validation rows for the phase, plus the statistics that go into training_args.json."""
    data_dir = Path(cfg.data_dir)
    raw = {split: read_jsonl(data_dir / f"{split}.jsonl") for split in ("train", "validation")}
    if not raw["train"]:
        raise ConfigError(f"{data_dir / 'train.jsonl'}: no rows to train on")
    if cfg.phase == "dapt":
        (train_rows, train_stats), (val_rows, val_stats) = (pack_documents(raw[split], tokenizer, cfg.max_length)
                                                            for split in ("train", "validation"))
        stats = {"train": train_stats, "validation": val_stats}
    else:
        train_rows, val_rows, stats = sft_rows(cfg, raw, tokenizer, log, is_main)
    if not val_rows:
        # Without validation rows the run has no validation loss and no eval-based divergence signal: that
        # has to be a choice, not something noticed afterwards as "validation loss: nan".
        where = (f"{data_dir / 'validation.jsonl'}: no validation rows"
                 + (f" (all {len(raw['validation'])} were dropped)" if raw["validation"] else ""))
        if not cfg.allow_empty_validation:
            raise ConfigError(f"{where}; add rows (./run.sh data writes a validation split), or pass "
                              "--allow-empty-validation to train without a validation loss")
        log.warn(f"{where}: training without a validation loss, as --allow-empty-validation asks")
        stats["validation"]["empty_accepted"] = True
    return train_rows, val_rows, stats


def sft_rows(cfg: TrainConfig, raw: dict[str, list[dict]], tokenizer, log: RunLog,
             is_main: bool) -> tuple[list[Row], list[Row], dict]:
    """SFT rows: the prompt contract on every conversation, then assistant-only labels (train/masking.py)."""
    from contract.prompt import check_conversation, read_model_system_prompt, system_prompt_for
    from train.masking import encode_dataset, read_template
    from train.template_parity import check_template_parity

    # Prompt contract first: a conversation whose system prompt is not ours would teach the model to
    # reason under a prompt it will never see at inference time.
    data_dir = Path(cfg.data_dir)
    expected_system = system_prompt_for(cfg.model_path)
    for split, rows in raw.items():
        bad = [(r.get("id"), codes) for r in rows if (codes := check_conversation(r.get("messages") or [], expected_system))]
        if bad:
            detail = "; ".join(f"{i}: {','.join(c)}" for i, c in bad[:10])
            msg = (f"{data_dir / (split + '.jsonl')}: {len(bad)} conversation(s) break the prompt contract "
                   f"(system prompt must be {cfg.model_path}/SYSTEM_PROMPT.txt + the C64 specialization): {detail}")
            if cfg.strict_assistant_only_loss:
                raise ConfigError(msg + " — rebuild the data with `./run.sh data --model-path " + cfg.model_path + "`")
            log.warn(msg + " — dropped")
            raw[split] = [r for r in rows if not check_conversation(r.get("messages") or [], expected_system)]
    template = read_template(cfg.chat_template_path)
    # Trained tokens must be served tokens: the folder's own template is the one inference uses.
    check_template_parity(cfg.model_path, cfg.chat_template_path, tokenizer, cfg.strict_assistant_only_loss, log.warn)
    default_system = read_model_system_prompt(cfg.model_path)
    out, stats = [], {}
    for split in ("train", "validation"):
        encoded, summary = encode_dataset(raw[split], tokenizer, template, max_length=cfg.max_length,
                                          strict=cfg.strict_assistant_only_loss, drop_overlong=cfg.drop_overlong,
                                          default_system_message=default_system, progress=is_main)
        for d in summary["dropped"]:
            log.warn(f"{split}: dropped {d['id']}: {d['code']} ({d['message']})")
        for code, n in summary["warnings"].items():
            log.warn(f"{split}: {n} example(s) with finding {code} (non-strict mode: trained anyway)")
        out.append([Row(e.example_id, e.input_ids, e.labels if cfg.assistant_only_loss else e.input_ids)
                    for e in encoded])
        stats[split] = {k: v for k, v in summary.items() if k != "dropped"} | {"dropped": len(summary["dropped"])}
    return out[0], out[1], stats


def setup(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device) -> Run:
    out = Path(cfg.output_dir)
    log = RunLog(out, info.rank, info.world_size, report_to=cfg.report_to)
    log.info(f"phase {cfg.phase}: model {cfg.model_path}, data {cfg.data_dir}, output {out}, device {device}, "
             f"{info.world_size} process(es)")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cfg.detect_anomaly:
        torch.autograd.set_detect_anomaly(True)
    if device.type == "cpu":
        flush_denormals()
        # Freed activations go back to the system at once, so the RSS is what the memory plan predicts.
        steady_cpu_allocator()
        note_emulated_bf16(device, cfg.precision, log.warn)
    # Same seed on every process: identical LoRA init everywhere, identical epoch plans.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model_path)
    train_rows, val_rows, data_stats = load_rows(cfg, tokenizer, log, info.is_main)
    # The memory plan, before any weight is read: it may turn on checkpointing, or stop the run here.
    rows = train_rows + val_rows
    plan = memory_plan.plan(cfg, read_text_config(cfg.model_path)[0], device,
                            width=min(cfg.max_length, max(len(r.input_ids) for r in rows)),
                            embed_rows=memory_plan.embed_rows_read(rows), world_size=info.world_size,
                            local_processes=memory_plan.local_processes(), shards=text_shards(cfg.model_path))
    for name, value in plan.changed.items():
        setattr(cfg, name, value)
    log.info(plan.describe())
    mesh = distributed.device_mesh(info, device) if cfg.fsdp else None
    model = build_model(cfg, device, log.info, mesh=mesh)
    # After sharding: fully_shard replaces every parameter with a DTensor, and the optimizer must hold those.
    params = trainable_parameters(model)
    n_trainable = sum(p.numel() for p in params.values())
    n_total = sum(p.numel() for p in model.parameters())
    log.info(f"trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.3f}%) "
             f"in {len(params)} {'LoRA' if cfg.use_lora else 'full-model (--no-use-lora)'} tensors")
    # Dropout streams differ per process (as they would on one big batch), but the init above did not.
    torch.manual_seed(cfg.seed + info.rank)

    # Fused AdamW runs the whole update in one CUDA kernel; on CPU the for-each path is the fast one.
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=cfg.weight_decay, fused=device.type == "cuda")

    run = Run(cfg=cfg, info=info, device=device, log=log, model=model, params=params, optimizer=optimizer,
              fsdp=fsdp_root(model), tokenizer=tokenizer, train_rows=train_rows, val_rows=val_rows,
              data_stats=data_stats, n_trainable=n_trainable, memory_plan=plan)
    micro_per_epoch = math.ceil(len(train_rows) / cfg.micro_batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / run.micro_per_step)
    run.total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    log.info(f"{len(train_rows)} training rows, {len(val_rows)} validation rows; {steps_per_epoch} optimizer "
             f"steps per epoch, {run.total_steps} in total ({run.micro_per_step} micro-batches of "
             f"{cfg.micro_batch_size} per step)")

    if cfg.resume:
        ck = checkpointing.latest_valid_checkpoint(out / "checkpoints", log.warn)
        if ck is None and cfg.resume == "auto":
            log.info(f"--resume auto: no checkpoint under {out / 'checkpoints'} yet; starting from step 0")
        elif ck is None:
            log.warn(f"--resume: no complete checkpoint under {out / 'checkpoints'}; starting from step 0")
        else:
            restore(ck, run)
            log.info(f"resumed from {ck['path']} at step {run.state.step} (epoch {run.state.epoch}, "
                     f"micro-batch {run.state.micro_index})")

    # MFU as it trains: model FLOPs per token at the data's mean row length (train/flops.py), over the card's
    # datasheet bf16 peak where it is known (the figure papers and peers divide by), else over a matmul rate
    # measured here; the measured rate is logged beside it either way.
    text_cfg = causal_lm(model).config
    mean_len = max(1, round(sum(len(r.input_ids) for r in train_rows) / len(train_rows)))
    run.flops_per_token = model_flops_per_token(text_cfg, mean_len, n_trainable if cfg.use_lora else 0,
                                                activation_checkpointing=cfg.gradient_checkpointing,
                                                full_finetune=not cfg.use_lora)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    run.measured_flops = measure_matmul_peak(device, dtype, seconds=0.3)
    run.peak_flops, run.peak_flops_source = mfu_peak(device, dtype, run.measured_flops)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the probe's matrices are not the run's memory
    log.info(f"model FLOPs/token {run.flops_per_token['model_flops'] / 1e6:.1f} M at mean length {mean_len}; "
             f"MFU over {run.peak_flops / 1e9:.0f} GFLOP/s ({run.peak_flops_source}); measured matmul rate "
             f"{run.measured_flops / 1e9:.0f} GFLOP/s ({cfg.precision})")
    if info.is_main:
        write_training_args(run, finished=False)
    return run


def fingerprint(cfg: TrainConfig, info: distributed.DistInfo) -> dict:
    """What must match for a resume to continue the same run (data order, batch shapes, schedule)."""
    keys = ("phase", "seed", "micro_batch_size", "grad_accum", "max_length", "lr", "epochs", "max_steps",
            "warmup_ratio", "min_lr_ratio", "group_by_length", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
            "precision", "model_path", "base_adapter", "use_lora")
    train_file = Path(cfg.data_dir) / "train.jsonl"
    return {k: getattr(cfg, k) for k in keys} | {"world_size": info.world_size,
                                                 "train_data_sha256": sha256_file(train_file)}


def restore(ck: dict, run: Run) -> None:
    cfg, info, params = run.cfg, run.info, run.params
    saved = ck["loop_state"]
    mismatch = {k: (v, saved["fingerprint"].get(k)) for k, v in fingerprint(cfg, info).items()
                if saved["fingerprint"].get(k) != v}
    if mismatch:
        raise ConfigError(f"--resume: {ck['path']} was written with different settings: "
                          + ", ".join(f"{k}={old!r} then, {new!r} now" for k, (new, old) in mismatch.items()))
    missing = set(params) - set(ck["trainable"])
    if missing:
        raise checkpointing.CheckpointCorrupt(f"{ck['path']}: adapter tensors missing: {sorted(missing)[:3]}")
    if cfg.fsdp:
        checkpointing.load_full_state(run.model, run.optimizer, {n: ck["trainable"][n] for n in params},
                                      ck["optimizer"])
    else:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(ck["trainable"][name])
        run.optimizer.load_state_dict(ck["optimizer"])
    checkpointing.restore_rng(ck["rng"][info.rank])
    run.state = LoopState.from_dict(saved)
    # A resume is a deliberate restart: the consecutive-skip budget starts afresh (the total stays counted).
    run.state.consecutive_skips = 0


# --------------------------------------------------------------------------------------------- loop

def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up, then cosine down to min_lr_ratio * lr: warm-up keeps fresh Adam moments from
    making large early moves; the floor keeps late steps useful on short fine-tuning runs."""
    warmup = int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def window_batches(run: Run, plan: list[list[int]], start: int) -> tuple[list[dict], list[str]]:
    """This process's micro-batches of the optimizer step that starts at plan[start].

    The window of W*A global micro-batches is dealt round-robin to the W processes, so 1 process with
    accumulation 2k and 2 processes with accumulation k train on exactly the same set per step.
    """
    window = plan[start:start + run.micro_per_step]
    mine = window[run.info.rank::run.info.world_size]
    batches = [collate([run.train_rows[i] for i in mb], share_prefix=run.cfg.share_prefix) for mb in mine]
    if run.fsdp is not None:
        # Every FSDP forward and backward gathers weights with collectives, so all processes must run as
        # many micro-batches as rank 0 (the deal gives it the most, in a short final window too). The
        # others pad with a zero-weight copy of the window's first micro-batch.
        filler = collate([run.train_rows[i] for i in window[0]], share_prefix=run.cfg.share_prefix) | {"filler": True}
        batches += [filler] * (len(window[0::run.info.world_size]) - len(batches))
    return batches, [rid for mb in window for rid in (run.train_rows[i].row_id for i in mb)]


# Window token counts: name in the loop -> per-micro-batch key from batching.collate.
TOKEN_COUNTS = {"label": "n_label_tokens", "all": "n_tokens", "trunk": "n_trunk_tokens", "padded": "n_padded_tokens"}


def forward_backward(run: Run, batches: list[dict], loss_factor: float = 1.0) -> tuple[float, float, dict[str, int]]:
    """Gradients of one optimizer step's window, summed over processes and clipped.

    Returns (loss, grad_norm, token counts) for the whole window; the counts are supervised tokens
    ("label"), non-pad tokens ("all"), tokens the layers ran ("trunk": all minus shared-prefix repeats)
    and tokens including padding ("padded"). `loss_factor` is the debugging flags' fault injection: NaN for
    --debug-nan-steps, 10 for --debug-spike-steps.
    The one host sync per step is here, after all micro-batches: the loss and norm are needed to decide
    whether the update is safe to apply.
    Under --fsdp, FSDP2 reduce-scatters the gradients in the last micro-batch's backward (a sum, see
    modeling.shard_model), each process keeps its shard, and clip_grad_norm_ takes the norm over the
    sharded DTensor gradients of all processes.
    """
    info, lm, params = run.info, causal_lm(run.model), list(run.params.values())
    fsdp = run.fsdp
    # Normalise by the supervised tokens of the whole window on all processes, known before any
    # forward pass: each micro-batch's summed loss / global count adds up to the global token mean.
    counted = [b for b in batches if not b.get("filler")]
    counts = dict(zip(TOKEN_COUNTS, (int(x) for x in distributed.all_reduce_sum(
        info, [sum(b[key] for b in counted) for key in TOKEN_COUNTS.values()], run.device))))
    n_label = counts["label"]
    loss_sum = torch.zeros((), device=run.device)
    for i, b in enumerate(batches):
        if fsdp is not None:
            # Accumulate unsharded gradients locally and reduce-scatter once, in the last backward.
            fsdp.set_requires_gradient_sync(i == len(batches) - 1)
        b = to_device(b, run.device)
        with autocast(run.device, run.cfg.precision), torch.profiler.record_function("forward"):
            micro_loss = labels_only_loss_sum(lm, b, run.cfg.loss_chunk_size)
        if loss_factor != 1.0:  # --debug-nan-steps / --debug-spike-steps: exercise the guards downstream
            micro_loss = micro_loss * loss_factor
        if b.get("filler"):
            micro_loss = micro_loss * 0.0  # joins FSDP's collectives; adds exact zeros to the gradients
        with torch.profiler.record_function("backward"):
            (micro_loss / max(n_label, 1)).backward()
        loss_sum += micro_loss.detach()

    for p in params:  # a process with no micro-batch in a short final window still joins the all-reduce
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if fsdp is None:
        distributed.all_reduce_grads(info, params)
    loss = distributed.all_reduce_sum(info, [loss_sum.item()], run.device)[0] / max(n_label, 1)
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    return loss, grad_norm, counts


def fit(run: Run, stop: StopSignals) -> None:
    cfg, info, state, log = run.cfg, run.info, run.state, run.log
    model, optimizer = run.model, run.optimizer
    nan_steps, spike_steps = ({int(s) for s in steps.split(",")} if steps else set()
                              for steps in (cfg.debug_nan_steps, cfg.debug_spike_steps))
    profiler = StepProfiler(cfg.profile_steps, Path(cfg.output_dir) / "profile", info.rank)
    watch = DivergenceWatch(cfg.divergence_spike_factor, cfg.divergence_eval_rises)

    if state.step == 0 and state.eval_loss_before is None:
        state.eval_loss_before = evaluate(run)
        record_eval(run, watch, 0, state.eval_loss_before, "validation loss before training:")
    if stop.stop_agreed(info, run.device):
        raise RunStopped(f"{stop.received or 'a stop signal (to another process)'} received before the first step of "
                         f"this process: stopped at step {state.step} with nothing new to save; start again with "
                         f"--resume auto")

    plan, plan_epoch = None, None
    window_t0, window_tokens = time.perf_counter(), dict.fromkeys(TOKEN_COUNTS, 0)
    bar = tqdm(total=run.total_steps, initial=state.step, desc=f"{cfg.phase}", unit="step",
               disable=not info.is_main, dynamic_ncols=True)
    model.train()
    while state.step < run.total_steps:
        if plan_epoch != state.epoch:
            plan = epoch_plan([len(r.input_ids) for r in run.train_rows], cfg.micro_batch_size, cfg.seed,
                              state.epoch, cfg.group_by_length and cfg.phase == "sft")
            plan_epoch = state.epoch
        step = state.step + 1  # 1-based number of the optimizer step being taken
        profiler.step_begin(step)
        rng_at_start = checkpointing.capture_rng()
        batches, window_ids = window_batches(run, plan, state.micro_index)

        loss, grad_norm, counts = forward_backward(run, batches, loss_factor=float("nan") if step in nan_steps
                                                   else 10.0 if step in spike_steps else 1.0)
        n_label = counts["label"]

        lr = lr_at(step - 1, cfg, run.total_steps)
        if math.isfinite(loss) and math.isfinite(grad_norm) and n_label > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.profiler.record_function("optimizer"):
                optimizer.step()
            state.consecutive_skips = 0
        else:
            # Skip the update: the weights keep their last good values and the bad gradients are dropped.
            state.skipped_steps += 1
            state.consecutive_skips += 1
            reason = "no supervised tokens in the window" if n_label == 0 else f"loss={loss} grad_norm={grad_norm}"
            log.warn(f"step {step}: non-finite update skipped ({reason}); rows {', '.join(window_ids[:8])}"
                     f"{' ...' if len(window_ids) > 8 else ''}")
            # Under FSDP the gather of the whole adapter is a collective: every process takes part.
            adapter = checkpointing.gather_full_trainable(model) if run.fsdp is not None and n_label > 0 else run.params
            if n_label > 0:
                # Every process writes its own micro-batches: the bad one may be any process's.
                bundle = forensics.save_bundle(Path(cfg.output_dir) / "forensics", step, batches, rng_at_start,
                                               adapter if info.is_main else None, cfg, window_ids, info.rank,
                                               info.world_size, str(run.device))
                if info.is_main:
                    log.warn(f"step {step}: forensics bundle written to {bundle} (replay: python -m train.forensics "
                             f"--replay {bundle})")
        optimizer.zero_grad(set_to_none=True)

        state.step = step
        state.micro_index += run.micro_per_step
        if state.micro_index >= len(plan):
            state.epoch += 1
            state.micro_index = 0
        for k in TOKEN_COUNTS:
            window_tokens[k] += counts[k]
        profiler.step_end(step)

        if state.consecutive_skips > cfg.max_consecutive_skips:
            path = save_checkpoint(run)
            raise TrainingAborted(f"{state.consecutive_skips} consecutive non-finite steps (limit "
                                  f"{cfg.max_consecutive_skips}) at step {step}; last good weights saved in {path}. "
                                  "See docs/troubleshooting.md#nan-aborts")

        if step % cfg.log_interval == 0 or step == run.total_steps:
            elapsed = time.perf_counter() - window_t0
            record = {"kind": "train", "step": step, "epoch": state.epoch, "loss": loss, "lr": lr,
                      "grad_norm": grad_norm, "supervised_tokens": n_label, "tokens": counts["all"],
                      "tokens_per_s": window_tokens["label"] / elapsed,
                      "all_tokens_per_s": window_tokens["all"] / elapsed,
                      "padding_share": 1 - window_tokens["all"] / max(1, window_tokens["padded"]),
                      "step_time_s": elapsed / cfg.log_interval, "skipped_steps": state.skipped_steps,
                      # FLOPs actually run: a shared prefix counts once per micro-batch, not once per row.
                      "mfu": labels_only_step_flops(run.flops_per_token, window_tokens["trunk"], window_tokens["label"])
                      / elapsed / run.peak_flops / info.world_size,
                      "mfu_measured_peak": labels_only_step_flops(run.flops_per_token, window_tokens["trunk"],
                                                                  window_tokens["label"])
                      / elapsed / run.measured_flops / info.world_size,
                      "peak_mem_MiB": peak_memory_mib(run.device)}
            log.metrics(record)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", mfu=f"{record['mfu']:.1%}",
                            refresh=False)
            window_t0, window_tokens = time.perf_counter(), dict.fromkeys(TOKEN_COUNTS, 0)
        bar.update(1)

        divergence_signal(run, watch.step_loss(step, loss))
        # The step boundary: every process asks, so all stop after the same step and join the checkpoint.
        if stop.stop_agreed(info, run.device):
            path = save_checkpoint(run)
            bar.close()
            raise RunStopped(f"{stop.received or 'a stop signal (to another process)'} received: stopped after step "
                             f"{step} of {run.total_steps} with a checkpoint{f' in {path}' if path else ''}; "
                             f"continue with the same command and --resume auto")
        if step % cfg.eval_interval == 0 and step != run.total_steps:
            record_eval(run, watch, step, evaluate(run), f"step {step}: validation loss")
        if step % cfg.save_interval == 0 and step != run.total_steps:
            save_checkpoint(run)
        if cfg.stop_after_steps and step >= cfg.stop_after_steps and step != run.total_steps:
            log.warn(f"stopping after step {step} as asked (--stop-after-steps); continue with --resume")
            run.stopped_early = True
            break
    bar.close()
    profiler.close()


def record_eval(run: Run, watch: DivergenceWatch, step: int, eval_loss: float, what: str) -> None:
    """Log an evaluation and hand it to the divergence watch; nothing to record without validation rows."""
    if not run.val_rows:
        return
    run.log.info(f"{what} {eval_loss:.4f}")
    run.log.metrics({"kind": "eval", "step": step, "eval_loss": eval_loss})
    divergence_signal(run, watch.eval_loss(step, eval_loss))


def divergence_signal(run: Run, message: str | None) -> None:
    """Warn of a divergence signal; under --abort-on-divergence, also checkpoint and stop (on every process)."""
    if message is None:
        return
    if run.info.is_main:
        run.log.warn(f"divergence: {message}")
    if run.cfg.abort_on_divergence:
        path = save_checkpoint(run)
        raise TrainingDiverged(f"--abort-on-divergence: {message}; the weights after this step are in {path}, "
                               "earlier ones in the older checkpoints. See docs/troubleshooting.md#divergence")


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Token-weighted mean loss over the validation split (fixed order; split across processes)."""
    cfg, info = run.cfg, run.info
    rows = run.val_rows
    if not rows:
        return float("nan")
    batches = [list(range(i, min(i + cfg.micro_batch_size, len(rows)))) for i in range(0, len(rows), cfg.micro_batch_size)]
    if cfg.eval_max_batches:
        batches = batches[:cfg.eval_max_batches]
    was_training = run.model.training
    run.model.eval()
    loss_sum, n_label = torch.zeros((), device=run.device), 0
    mine = batches[info.rank::info.world_size]
    # Under FSDP every process runs as many forward passes as rank 0 (collectives in each); extra ones
    # repeat the first batch and are not counted.
    n_forward = len(batches[0::info.world_size]) if run.fsdp is not None else len(mine)
    for k in range(n_forward):
        b = collate([rows[i] for i in (mine[k] if k < len(mine) else batches[0])], share_prefix=cfg.share_prefix)
        with autocast(run.device, cfg.precision):
            micro_loss = labels_only_loss_sum(causal_lm(run.model), to_device(b, run.device), cfg.loss_chunk_size)
        if k < len(mine):
            n_label += b["n_label_tokens"]
            loss_sum += micro_loss
    total, count = distributed.all_reduce_sum(info, [loss_sum.item(), n_label], run.device)
    run.model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------- checkpoints/out

def save_checkpoint(run: Run) -> Path | None:
    """All processes contribute their RNG state; only the main process writes."""
    rng = json.dumps(checkpointing.capture_rng())
    rng_all = [json.loads(s) for s in distributed.gather_json(run.info, rng, run.device)]
    path = None
    if run.fsdp is not None:
        # Collectives: every process helps gather whole tensors; only the main process receives them.
        trainable = checkpointing.gather_full_trainable(run.model)
        optimizer_state = checkpointing.gather_full_optimizer(run.model, run.optimizer)
    else:
        trainable, optimizer_state = run.params, (run.optimizer.state_dict() if run.info.is_main else None)
    if run.info.is_main:
        loop_state = run.state.to_dict() | {"fingerprint": fingerprint(run.cfg, run.info)}
        path = checkpointing.save_checkpoint(Path(run.cfg.output_dir) / "checkpoints", run.state.step,
                                             trainable=trainable, optimizer_state=optimizer_state,
                                             loop_state=loop_state, rng_per_rank=rng_all, keep=run.cfg.keep_checkpoints)
        run.log.info(f"checkpoint written: {path}")
    distributed.barrier(run.info)
    return path


def versions() -> dict:
    import peft
    import safetensors
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}


def write_training_args(run: Run, finished: bool, extra: dict | None = None) -> None:
    cfg = run.cfg
    data_dir = Path(cfg.data_dir)
    record = dataclasses.asdict(cfg) | {
        "resolved": {"device": str(run.device), "world_size": run.info.world_size,
                     "global_batch_rows": cfg.micro_batch_size * run.micro_per_step, "total_steps": run.total_steps,
                     "trainable_parameters": run.n_trainable,
                     "attention": causal_lm(run.model).config._attn_implementation,
                     "mfu_peak_flops": run.peak_flops, "mfu_peak_source": run.peak_flops_source,
                     "measured_matmul_flops": run.measured_flops},
        "versions": versions(),
        "data_files": {p.name: sha256_file(p) for p in sorted(data_dir.glob("*.jsonl"))},
        "data_stats": run.data_stats,
        "chat_template_sha256": sha256_file(Path(cfg.chat_template_path)) if cfg.phase == "sft" else None,
        "lineage": {"base_model": str(Path(cfg.model_path).resolve()),
                    "base_adapter": str(Path(cfg.base_adapter).resolve()) if cfg.base_adapter else None},
        "memory_plan": (run.memory_plan.to_dict(peak_memory_mib(run.device), peak_reserved_mib(run.device))
                        if run.memory_plan else None),
        "finished": finished,
    } | (extra or {})
    path = Path(cfg.output_dir) / "training_args.json"
    path.write_text(json.dumps(record, indent=1, default=str))


def finish(run: Run) -> None:
    cfg, log = run.cfg, run.log
    eval_loss = evaluate(run)
    if run.val_rows:
        log.info(f"validation loss after training: {eval_loss:.4f} (before: {run.state.eval_loss_before:.4f})")
        log.metrics({"kind": "eval", "step": run.state.step, "eval_loss": eval_loss})
    save_checkpoint(run)
    # Under FSDP each process holds a shard: gather the whole adapter (a collective) for peft to write.
    adapter = {"state_dict": checkpointing.gather_full_trainable(run.model)} if run.fsdp is not None else {}
    if run.info.is_main:
        out = Path(cfg.output_dir)
        # LoRA: adapter_model.safetensors + adapter_config.json, loadable with peft. --no-use-lora: the whole text
        # model (config.json + model.safetensors, fp32), a model folder of its own.
        run.model.save_pretrained(out, **adapter)
        run.tokenizer.save_pretrained(out)
        template = Path(cfg.chat_template_path) if cfg.phase == "sft" else Path(cfg.model_path) / "chat_template.jinja"
        if template.is_file():
            (out / "chat_template.jinja").write_text(template.read_text(encoding="utf-8"), encoding="utf-8")
        exports = {}
        if cfg.use_lora and read_text_config(cfg.model_path)[1] == "mistral3":
            exports["vlm_adapter"] = str(export_vlm_adapter(out))
        write_training_args(run, finished=True, extra={"exports": exports,
            "result": {"steps": run.state.step, "skipped_steps": run.state.skipped_steps,
                       "eval_loss_before": run.state.eval_loss_before, "eval_loss_after": eval_loss,
                       "wall_s": round(time.time() - run.started, 1)}})
        if cfg.merge:
            merged = export_merged(out)
            log.info(f"merged model written to {merged}")
        log.info(f"run report written to {report.write_run_report(out, run.train_rows, run.tokenizer)}")
        log.info(f"adapter and artifacts written to {out}")
    distributed.barrier(run.info)


# --------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    expandable_cuda_segments()  # before anything can allocate on a GPU
    if "--replay" in argv:
        return forensics.main(argv)
    cfg = parse_args(argv)
    try:
        validate_args(cfg, torch.cuda.is_available())
    except ConfigError as e:
        print(f"train.main: {e}", file=sys.stderr)
        return 2
    info = distributed.DistInfo()
    run = None
    stop = StopSignals()
    try:
        # Before the process group and any weight: a large model must not start on the CPU without a word.
        refuse_silent_cpu(cfg.device, memory_plan.text_param_count(read_text_config(cfg.model_path)[0]))
        info = distributed.init("cuda" if cfg.device.startswith("cuda") or
                                (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        device = resolve_device(cfg.device, info.local_rank)
        run = setup(cfg, info, device)
        # Only the training steps stop gracefully: a signal during setup or the final export ends the process
        # at once, losing nothing a restart does not redo (finish() writes its checkpoint first).
        if not stop.install():
            run.log.warn("not on the main thread, so no signal handlers: SIGTERM or SIGINT will end the run "
                         "without a checkpoint")
        fit(run, stop)
        stop.restore()
        if not run.stopped_early:
            finish(run)
        return 0
    except RunStopped as e:
        run.log.warn(str(e))
        report_after_stop(run)
        return EXIT_STOPPED
    except UserError as e:
        # Errors with a message meant for the user: no traceback, just what and where, and exit 1.
        (run.log if run else RunLog(None, info.rank, info.world_size)).error(str(e))
        if run is not None:
            report_after_stop(run)
        return 1
    except Exception as e:
        # Name the rank and the error, then exit non-zero: torchrun tears the other processes down.
        (run.log if run else RunLog(None, info.rank, info.world_size)).error(f"{type(e).__name__}: {e}")
        raise
    finally:
        stop.restore()
        if run is not None:
            run.log.close()
        distributed.cleanup(info)


def report_after_stop(run: Run) -> None:
    """report.html for a run that stopped early (signal or abort), from what it logged so far."""
    if not run.info.is_main:
        return
    try:
        page = report.write_run_report(Path(run.cfg.output_dir), run.train_rows, run.tokenizer)
        run.log.info(f"run report written to {page}")
    except Exception as e:  # the stop's own message and exit status matter more than the page
        run.log.error(f"report.html could not be written: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
