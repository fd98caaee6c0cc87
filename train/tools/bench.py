"""Speed and memory benchmark of the training step, printing figures, never pass/fail (docs/performance.md).

    python -m train.tools.bench --preset cpu [--fixture DIR] [--trl-python PY --trl-script FILE] [--out FILE.json]
    python -m train.tools.bench --preset 8b  [--phase dapt|sft] [--steps N] [--accum N] [--out FILE.json]  (needs a GPU)

It drives the loop's own forward_backward() and AdamW step (train/main.py), so the figures are the
loop's, not a re-implementation's. Presets:
  cpu  the shapes of the bench fixture (train/tools/bench_fixture.py: a small Ministral-3-shaped model with a
       tokenizer, the training template and reasoning conversations): hidden 512, 8 layers, vocab 32768,
       seq <= 512, micro-batch 2, accumulation 16, LoRA r16 on all projections. With --fixture, the fixture's
       own model, tokenizer, template and conversations (what TRL's baseline trains on); with --trl-python and
       --trl-script (train/tools/trl_baseline.py, run by a python that has TRL), TRL's SFTTrainer runs on the
       same fixture in a subprocess first and both are reported. `./run.sh bench-trl` does all of it.
  8b   the real Ministral 3 8B text shapes with random bf16 weights, seq 2048, micro-batch 2, LoRA r16.
--phase dapt trains full 2048-token blocks with every token labelled; sft (the default) conversation-shaped
rows. The memory plan chooses the setting as the loop's does (--memory-budget, default auto).
Reports steady-state figures, the first --warmup-steps optimizer steps (compilation, allocator growth, clock
ramp-up) left out: trained (supervised) tokens/s, all tokens/s, padding share, step time, MFU against the card's
datasheet bf16 peak (train.flops.mfu_peak; on CPU and unknown cards a matmul rate measured on the spot, before
and after the steps, the higher one) with the measured rate beside it, and peak memory (CUDA max allocated and
max reserved, or peak RSS on CPU) next to the memory plan's prediction.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
import torch

from contract.tokens import IGNORE_INDEX
from train import distributed, memory_plan
from train.attention import set_attention
from train.batching import Row, collate, epoch_plan, read_jsonl
from train.config import TrainConfig
from train.device import default_precision, expandable_cuda_segments, flush_denormals, resolve_device, steady_cpu_allocator
from train.flops import labels_only_step_flops, lora_param_count, measure_matmul_peak, mfu_peak, model_flops_per_token
from train.lora_dropout import use_lane_mask_dropout
from train.lora_model import attach_lora
from train.main import forward_backward
from train.pretrained import TEXT_CONFIG_8B
from train.run_log import RunLog
from train.state import Run
from train.tools.model_files import BENCH_TEXT, text_config

PRESETS = {
    "cpu": dict(shapes=BENCH_TEXT, max_length=512, micro_batch=2, accum=16, steps=8),
    "8b": dict(shapes=TEXT_CONFIG_8B, max_length=2048, micro_batch=2, accum=16, steps=4),
}


def random_text_model(shapes: dict, dtype: torch.dtype, device: torch.device):
    """A Ministral3ForCausalLM with the real rope layout and random weights, built directly on the device."""
    from transformers import Ministral3ForCausalLM

    cfg = text_config(shapes)
    torch.manual_seed(0)
    # Built in its final dtype: an 8B model built in fp32 first needs 34 GB at once, more than a 24 GB card has.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Ministral3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model


def fixture_rows(fixture: Path, tokenizer, max_length: int) -> list[Row]:
    """The fixture's conversations, labelled through our span masking with the fixture's own template.

    The fixture's tokenizer has its control tokens at other ids than Ministral 3's, so the strict checks
    (which assert [THINK] = 34) cannot apply; the labels still come from the template's generation spans.
    Rows are cut to max_length as TRL does.
    """
    from train.masking import encode_dataset
    template = (fixture / "chat_template.jinja").read_text(encoding="utf-8")
    rows = [{"id": str(r["id"]), "messages": r["messages"]} for r in read_jsonl(fixture / "data" / "train.jsonl")]
    encoded, _ = encode_dataset(rows, tokenizer, template, max_length=max_length, strict=False, progress=False)
    return [Row(e.example_id, e.input_ids, e.labels) for e in encoded]


def synthetic_rows(n: int, max_length: int, vocab: int, seed: int = 0, phase: str = "sft") -> list[Row]:
    """SFT: conversation-shaped rows, a prompt part without labels and an answer part with them. DAPT: packed
    blocks of max_length tokens, every token labelled."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ids = [rng.randrange(1000, vocab) for _ in range(max_length)]
        if phase == "dapt":
            rows.append(Row(f"block-{i}", ids, ids))
            continue
        length = max_length if max_length >= 2048 else rng.randint(max_length // 4, max_length)
        ids, prompt = ids[:length], length // 2
        rows.append(Row(f"syn-{i}", ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return rows


def run_trl(python: str, script: Path, fixture: Path, steps: int, precision: str) -> dict:
    cmd = [python, str(script), "--fixture", str(fixture), "--max-steps", str(steps), "--precision", precision,
           "--output-dir", str(fixture.parent / "trl_baseline_out")]
    print(f"[bench] TRL baseline: {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"TRL baseline failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) for this process, so a run measures only itself."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(reset_worked: bool) -> tuple[float, str]:
    if reset_worked:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "peak RSS of this run (VmHWM, reset at its start)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS of the process so far (ru_maxrss)"


def bench(preset: str, fixture: Path | None, precision: str, steps: int | None, gradient_checkpointing: bool,
          device: torch.device, group_by_length: bool = True, compile: bool = False,
          stock_dropout: bool = False, attention: str = "auto", phase: str = "sft", accum: int | None = None,
          warmup_steps: int = 1, memory_budget: str = "auto") -> dict:
    # Under --repeat the runs share a process; the CPU peak must cover this run, model load included, only.
    rss_reset = device.type == "cpu" and reset_peak_rss()
    runtime = memory_plan.runtime_bytes(device)  # for the memory plan's prediction below
    p = dict(PRESETS[preset])
    p["accum"] = accum or p["accum"]
    # The warm-up steps are run and left out of the figures, so at least one step is measured.
    steps = (steps or p["steps"]) + warmup_steps
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if fixture:
        from transformers import PreTrainedTokenizerFast

        from train.pretrained import load_text_model
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(fixture / "model"))
        base = load_text_model(fixture / "model", dtype=dtype, device=device)
        rows = fixture_rows(fixture, tokenizer, p["max_length"])
        data = f"fixture {fixture}"
    else:
        base = None
        rows = synthetic_rows(p["micro_batch"] * p["accum"] * steps, p["max_length"], p["shapes"]["vocab_size"],
                              phase=phase)
        data = f"synthetic {phase}"
    cfg = TrainConfig(phase=phase, precision=precision, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                      max_length=p["max_length"], micro_batch_size=p["micro_batch"], grad_accum=p["accum"],
                      gradient_checkpointing=gradient_checkpointing, compile=compile, attention=attention,
                      device=str(device), memory_budget=memory_budget).resolve()
    text_cfg = base.config if base is not None else text_config(p["shapes"])
    # The loop's memory plan for these settings, before the model is built (it may turn on checkpointing; the model
    # here is built in memory, so all of it counts).
    mem_plan = memory_plan.plan(cfg, text_cfg, device, width=max(len(r.input_ids) for r in rows), embed_rows=None,
                                runtime=runtime)
    for name, value in mem_plan.changed.items():
        setattr(cfg, name, value)
    predicted = mem_plan.chosen
    if base is None:
        base = random_text_model(p["shapes"], dtype, device)
    attention_why = set_attention(base, cfg, device)
    model = attach_lora(base, cfg)
    if stock_dropout:  # undo attach_lora's CPU dropout swap, to measure what it saves
        use_lane_mask_dropout(model, enable=False)
    model.train()
    params = {n: prm for n, prm in model.named_parameters() if prm.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, fused=device.type == "cuda")
    run = Run(cfg=cfg, info=distributed.DistInfo(), device=device, log=RunLog(None), model=model, params=params,
              optimizer=optimizer)

    # The loop's own epoch plan: with --group-by-length (the SFT recipe's default) rows of similar length
    # share a micro-batch; without it, the fixture's order as a sequential sampler would give it.
    if group_by_length:
        plan = epoch_plan([len(r.input_ids) for r in rows], p["micro_batch"], seed=0, epoch=0, group_by_length=True)
    else:
        plan = [list(range(i, min(i + p["micro_batch"], len(rows)))) for i in range(0, len(rows), p["micro_batch"])]
    micro = [[rows[i] for i in mb] for mb in plan]
    windows = [micro[i:i + p["accum"]] for i in range(0, len(micro), p["accum"])][:steps]
    if len(windows) <= warmup_steps:
        raise SystemExit(f"bench: {len(windows)} optimizer step(s) of data, not more than the {warmup_steps} warm-up "
                         "step(s): nothing would be measured; lower --warmup-steps or --accum")
    # The measured rate is taken before and after the steps and the higher one is used: on a shared machine a
    # single measurement taken in a slow minute would overstate the MFU of the run.
    peaks = [measure_matmul_peak(device, dtype)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        flush_denormals()  # as the loop does on CPU
        steady_cpu_allocator()
    totals = {"label": 0, "all": 0, "trunk": 0, "padded": 0}
    steady = dict.fromkeys(totals, 0)
    step_times, losses = [], []
    t_start = time.perf_counter()
    for window in windows:
        if len(step_times) == warmup_steps and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # keep the peaks: the warm-up's are the same steps'
        t = time.perf_counter()
        loss, grad_norm, counts = forward_backward(run, [collate(mb, share_prefix=cfg.share_prefix) for mb in window])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - t)
        losses.append(round(loss, 4))
        for k in totals:
            totals[k] += counts[k]
            if len(step_times) > warmup_steps:
                steady[k] += counts[k]
        print(f"[bench] step {len(step_times)}/{len(windows)}: {step_times[-1]:.2f}s loss {loss:.4f}", flush=True)
    wall = time.perf_counter() - t_start

    text_cfg = model.base_model.model.config
    mean_len = totals["all"] / max(1, sum(len(mb) for w in windows for mb in w))
    flops = model_flops_per_token(text_cfg, int(round(mean_len)), lora_param_count(text_cfg, 16),
                                  activation_checkpointing=cfg.gradient_checkpointing)
    steady_flops = labels_only_step_flops(flops, steady["trunk"], steady["label"])
    peaks.append(measure_matmul_peak(device, dtype))
    measured = max(peaks)
    peak, peak_source = mfu_peak(device, dtype, measured)
    steady_s = sum(step_times[warmup_steps:])
    if device.type == "cuda":
        peak_mem, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        (peak_mem, peak_kind), reserved = peak_rss_mib(rss_reset), None
    result = {
        "preset": preset, "data": data, "device": str(device), "precision": precision,
        "threads": torch.get_num_threads(), "compile": compile,
        "lora_dropout": "nn.Dropout" if stock_dropout else "LaneMaskDropout",
        "attention": base.config._attn_implementation, "attention_reason": attention_why,
        "group_by_length": group_by_length,
        "optimizer_steps": len(windows), "micro_batch": p["micro_batch"], "accum": p["accum"],
        "max_length": p["max_length"], "lora_r": 16, "trainable_params": sum(x.numel() for x in params.values()),
        "supervised_tokens": totals["label"], "tokens": totals["all"], "padded_tokens": totals["padded"],
        "warmup_steps": warmup_steps, "step_times_s": [round(t, 6) for t in step_times],
        "train_wall_s": round(wall, 2), "steady_wall_s": round(steady_s, 6),
        # Steady state: the steps after the warm-up only. Microseconds, so that a toy step of a few
        # milliseconds still sums back to the rate below.
        "trained_tokens_per_s": round(steady["label"] / steady_s, 1),
        "all_tokens_per_s": round(steady["all"] / steady_s, 1),
        "padding_share": round(1 - totals["all"] / max(1, totals["padded"]), 4),
        "s_per_optimizer_step": round(steady_s / (len(windows) - warmup_steps), 3),
        "model_flops_per_step_mean": steady_flops / (len(windows) - warmup_steps),
        "mfu": round(steady_flops / steady_s / peak, 4), "mfu_peak_flops": peak, "mfu_peak_source": peak_source,
        "mfu_measured_peak": round(steady_flops / steady_s / measured, 4),
        "matmul_peak_flops": measured, "matmul_peak_flops_before_after": peaks,
        "peak_memory_MiB": round(peak_mem, 1),
        "peak_memory_kind": peak_kind,
        "peak_reserved_MiB": None if reserved is None else round(reserved, 1),
        "predicted_peak_MiB": round(predicted.peak / 2**20, 1),
        "predicted_parts_MiB": predicted.to_dict()["parts_MiB"],
        "memory_plan": mem_plan.to_dict(peak_mem, reserved),
        "phase": phase, "share_prefix": cfg.share_prefix, "gradient_checkpointing": cfg.gradient_checkpointing,
        "losses": losses,
        "versions": {"torch": torch.__version__},
    }
    return result


def print_run(run: dict, index: int, total: int) -> None:
    o, tag = run["ours"], f"[bench] run {index}/{total}" if total > 1 else "[bench]"
    print(f"{tag} {o['preset']} on {o['device']} ({o['precision']}, {o['threads']} threads, {o['attention']} attention): "
          f"trained {o['trained_tokens_per_s']} tok/s, all {o['all_tokens_per_s']} tok/s, padding {o['padding_share']:.1%}, "
          f"{o['s_per_optimizer_step']} s/step, MFU {o['mfu']:.1%} ({o['mfu_peak_source']}; {o['mfu_measured_peak']:.1%} of "
          f"a measured {o['matmul_peak_flops'] / 1e9:.0f} GFLOP/s), "
          f"peak memory {o['peak_memory_MiB']} MiB (memory plan: {o['predicted_peak_MiB']} MiB)", flush=True)
    if "trl" in run:
        t = run["trl"]
        print(f"{tag} TRL SFTTrainer: trained {t['assistant_tokens_per_s']} tok/s, all {t['tokens_per_s']} tok/s, "
              f"peak RSS {t['peak_rss_MiB']} MiB -> ours/TRL: {run['comparison']}", flush=True)


def summarise(runs: list[dict]) -> dict:
    """min / median / max over the runs of the figures the targets are about."""
    series = {"ours_trained_tokens_per_s": [r["ours"]["trained_tokens_per_s"] for r in runs],
              "ours_mfu": [r["ours"]["mfu"] for r in runs]}
    if "trl" in runs[0]:
        series["trl_trained_tokens_per_s"] = [r["trl"]["assistant_tokens_per_s"] for r in runs]
        series["trained_tokens_per_s_ratio"] = [r["comparison"]["trained_tokens_per_s_ratio"] for r in runs]
        series["peak_rss_ratio"] = [r["comparison"]["peak_rss_ratio"] for r in runs]
    return {k: {"min": min(v), "median": round(statistics.median(v), 4), "max": max(v)} for k, v in series.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--fixture", type=Path, default=None,
                    help="bench fixture folder (model/, data/train.jsonl, chat_template.jinja)")
    ap.add_argument("--trl-python", default=None, help="python with trl installed: run TRL's baseline first, same fixture")
    ap.add_argument("--trl-script", type=Path, default=None,
                    help="the TRL SFTTrainer baseline script that --trl-python runs (prints its figures as JSON)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 on GPU or on a CPU with native bf16, else fp32")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps, after the warm-up (default: preset)")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="optimizer steps run first and left out of the figures (default 1, 2 with --compile)")
    ap.add_argument("--phase", choices=["dapt", "sft"], default="sft",
                    help="synthetic rows of this phase (dapt: full blocks, every token labelled)")
    ap.add_argument("--accum", type=int, default=None, help="micro-batches per optimizer step (default: preset)")
    ap.add_argument("--memory-budget", default="auto", help="as the loop's --memory-budget (auto, GiB, or off)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder layers, as the loop's --compile")
    ap.add_argument("--stock-dropout", action="store_true",
                    help="peft's own nn.Dropout for the LoRA dropout instead of the loop's CPU LaneMaskDropout")
    ap.add_argument("--attention", choices=["auto", "sdpa", "eager"], default="auto",
                    help="attention kernel, as the loop's --attention (auto: eager on CPU at these shapes)")
    ap.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                    help="micro-batches in fixture order (as TRL's default sampler) instead of length-grouped")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run (TRL, then ours) this many times and print min / median / max of the ratios")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    expandable_cuda_segments()  # as the loop does, before anything allocates on a GPU
    device = resolve_device(a.device)
    warmup = a.warmup_steps if a.warmup_steps is not None else (2 if a.compile else 1)
    if a.preset == "8b" and device.type != "cuda":
        print("bench: the 8b preset needs a GPU (16 GiB of bf16 weights and ~TFLOPs per step); "
              "use --preset cpu here", file=sys.stderr)
        return 2
    if a.repeat < 1:
        print(f"bench: --repeat must be >= 1, got {a.repeat}", file=sys.stderr)
        return 2
    if a.trl_python and not (a.fixture and a.trl_script and a.trl_script.is_file()):
        print("bench: --trl-python needs --fixture (TRL trains on the fixture) and --trl-script FILE (the baseline "
              "script)", file=sys.stderr)
        return 2
    precision = default_precision(device) if a.precision == "auto" else a.precision
    # One run of either side moves by several percent on a shared VM, so --repeat alternates TRL and ours N
    # times and summarises the spread instead of trusting one pair.
    runs = []
    for _ in range(a.repeat):
        run = {}
        if a.trl_python:
            run["trl"] = run_trl(a.trl_python, a.trl_script, a.fixture, a.steps or PRESETS[a.preset]["steps"],
                                 precision)
        run["ours"] = bench(a.preset, a.fixture, precision, a.steps, a.gradient_checkpointing, device,
                            a.group_by_length, a.compile, a.stock_dropout, a.attention, a.phase, a.accum, warmup,
                            a.memory_budget)
        if "trl" in run:
            ours, trl = run["ours"], run["trl"]
            run["comparison"] = {
                "all_tokens_per_s_ratio": round(ours["all_tokens_per_s"] / trl["tokens_per_s"], 2),
                "trained_tokens_per_s_ratio": round(ours["trained_tokens_per_s"] / trl["assistant_tokens_per_s"], 2),
                "peak_rss_ratio": round(ours["peak_memory_MiB"] / trl["peak_rss_MiB"], 2),
            }
        print_run(run, len(runs) + 1, a.repeat)
        runs.append(run)
        # Free this run's model before the next loads. The process keeps some torch, oneDNN and allocator state
        # between runs, so later runs read a little higher than a fresh process (docs/performance.md).
        gc.collect()
    report = {"runs": runs, "summary": summarise(runs)}
    if a.repeat > 1:
        print(f"[bench] over {a.repeat} runs (min / median / max): " + "; ".join(
            f"{k} {v['min']} / {v['median']} / {v['max']}" for k, v in report["summary"].items()))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))
        print(f"[bench] written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
