"""The real scale on this machine: each step of the seed's flow on a model folder, measured in its own process.

    python -m train.tools.scale_check --model-path DIR --work-dir DIR [--dapt-lengths 1024,2048]
                                      [--sft-length 1024] [--skip merge] [--out FILE.json]

Made for the 8B-shape random checkpoint (./run.sh random-model --shape 8b) on a CPU, and usable on any
Ministral 3 folder. Steps, each a fresh `python` process so its peak memory is its own:

  data       the data build for this model folder (its SYSTEM_PROMPT.txt and tokenizer), once per work dir
  load       load_text_model() alone: the language-model tensors, never the vision tower
  dapt-L     DAPT at max length L, micro-batch 1, no accumulation; the first length is interrupted after
             step 1 (a checkpoint) and the next step resumes it to the end, the others run two steps
  resume     --resume of the interrupted run: step 2, the final checkpoint, the adapter and vlm_adapter/
  sft        SFT on top of the first DAPT adapter (merged into the base), rows up to --sft-length
  export     export_vlm_adapter() of the SFT run alone
  merge      --resume --merge on the finished SFT run: no step left, so it loads, evaluates and writes merged/

For each step it records the wall time and the process's peak RSS (the kernel's ru_maxrss of that child),
and for the training steps the memory plan's prediction from the run's training_args.json, then prints a
table and writes everything to JSON. A failed step (killed for memory, say) is recorded and the rest go on.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from train.config import PROJECT_ROOT
from train.device import default_precision

STEPS = ("data", "load", "dapt", "resume", "sft", "export", "merge")
LOAD_SNIPPET = ("import sys, time; from train.pretrained import load_text_model; t = time.perf_counter(); "
                "m = load_text_model(sys.argv[1]); "
                "print(f'loaded {sum(p.numel() for p in m.parameters()):,} parameters in {time.perf_counter() - t:.1f}s')")
EXPORT_SNIPPET = "import sys; from train.export import export_vlm_adapter; print(export_vlm_adapter(sys.argv[1]))"


def measure(name: str, cmd: list[str], log_dir: Path) -> dict:
    """Run `cmd` as a child process; its exit status, wall time and own peak RSS (from wait4)."""
    log = log_dir / f"{name}.log"
    print(f"[scale-check] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    row = {"step": name, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
           "peak_rss_MiB": round(usage.ru_maxrss / 1024, 1), "log": str(log)}
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        row["error"] = " | ".join(tail) + (" (killed: out of memory?)" if rc in (-9, 137) else "")
    print(f"[scale-check] {name}: exit {rc}, {row['wall_s']} s, peak RSS {row['peak_rss_MiB'] / 1024:.2f} GiB", flush=True)
    return row


def add_plan(row: dict, run_dir: Path) -> dict:
    """The memory plan's prediction for a training step, and the prediction error against the measured peak."""
    args_file = run_dir / "training_args.json"
    if not args_file.is_file():
        return row
    args = json.loads(args_file.read_text())
    plan = args.get("memory_plan") or {}
    predicted = plan.get("predicted_peak_MiB")
    if predicted:
        row.update(predicted_peak_MiB=predicted, plan_checkpointing=plan["chosen"]["gradient_checkpointing"],
                   plan_attention=plan["chosen"]["attention"],
                   plan_error=round((row["peak_rss_MiB"] - predicted) / row["peak_rss_MiB"], 3))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        steps = [json.loads(x) for x in metrics.read_text().splitlines()]
        times = [r["step_time_s"] for r in steps if r.get("kind") == "train"]
        if times:
            row["s_per_step"] = round(sum(times) / len(times), 1)
    return row


# The recipe's bf16 where this CPU runs it natively; elsewhere bf16 is emulated, many times slower than fp32
# (a later --precision in --train-flags still wins).
CPU_PRECISION = default_precision(torch.device("cpu"))


def train_cmd(phase: str, model: Path, data: Path, out: Path, length: int, steps: int, *extra: str,
              flags: tuple[str, ...] = ()) -> list[str]:
    data_flag = "--dapt-dir" if phase == "dapt" else "--sft-dir"
    return [sys.executable, "-m", "train.main", "--phase", phase, "--model-path", str(model), data_flag,
            str(data / phase), "--output-dir", str(out), "--max-length", str(length), "--micro-batch-size", "1",
            "--grad-accum", "1", "--max-steps", str(steps), "--eval-max-batches", "1", "--save-interval", "1",
            "--device", "cpu", "--precision", CPU_PRECISION, *flags, *extra]


def print_table(rows: list[dict]) -> None:
    head = f"{'step':<12}{'exit':>5}{'wall s':>9}{'s/step':>8}{'peak RSS GiB':>14}{'plan GiB':>10}{'error':>8}  setting"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        plan = f"{r['predicted_peak_MiB'] / 1024:.2f}" if "predicted_peak_MiB" in r else "-"
        err = f"{r['plan_error']:+.1%}" if "plan_error" in r and r["rc"] == 0 else "-"
        setting = (f"checkpointing {'on' if r['plan_checkpointing'] else 'off'}, {r['plan_attention']}"
                   if "plan_checkpointing" in r else "")
        print(f"{r['step']:<12}{r['rc']:>5}{r['wall_s']:>9}{r.get('s_per_step', '-'):>8}"
              f"{r['peak_rss_MiB'] / 1024:>14.2f}{plan:>10}{err:>8}  {setting}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.scale_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", type=Path, required=True, help="model folder (e.g. ./run.sh random-model's)")
    ap.add_argument("--work-dir", type=Path, required=True, help="data, runs, logs and the JSON go here")
    ap.add_argument("--dapt-lengths", default="1024,2048", help="DAPT max lengths, comma list (default 1024,2048)")
    ap.add_argument("--sft-length", type=int, default=1024, help="SFT max length (default 1024)")
    ap.add_argument("--sft-max", type=int, default=40, help="SFT conversations the data build generates")
    ap.add_argument("--train-flags", default="",
                    help="more train.main flags for every training step, e.g. \"--memory-budget 20\"")
    ap.add_argument("--skip", default="", help=f"comma list of steps to leave out, of {', '.join(STEPS)}")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default WORK_DIR/scale_check.json)")
    a = ap.parse_args(argv)
    try:
        lengths = [int(x) for x in a.dapt_lengths.split(",") if x.strip()]
        assert lengths and all(n >= 16 for n in lengths)
    except (ValueError, AssertionError):
        ap.error(f"--dapt-lengths {a.dapt_lengths!r}: a comma list of lengths >= 16")
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    flags = tuple(shlex.split(a.train_flags))
    if skip - set(STEPS):
        ap.error(f"--skip: unknown step(s) {sorted(skip - set(STEPS))}; steps are {', '.join(STEPS)}")
    if not (a.model_path / "config.json").is_file():
        print(f"scale_check: {a.model_path / 'config.json'}: not found; --model-path must be a model folder",
              file=sys.stderr)
        return 2
    work = a.work_dir.resolve()
    model = a.model_path.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data, runs = work / "data", work / "runs"
    rows: list[dict] = []

    if "data" not in skip and not (data / "sft" / "train.jsonl").is_file():
        rows.append(measure("data", [sys.executable, "-m", "data.build", "--raw-dir", str(PROJECT_ROOT / "data/raw"),
                                     "--out-dir", str(data), "--model-path", str(model),
                                     "--sft-max", str(a.sft_max)], logs))
    if "load" not in skip:
        rows.append(measure("load", [sys.executable, "-c", LOAD_SNIPPET, str(model)], logs))
    first = runs / f"dapt-{lengths[0]}"
    if "dapt" not in skip:
        for i, length in enumerate(lengths):
            out = runs / f"dapt-{length}"
            # The first length stops after step 1 (as if interrupted) so that the resume step continues it.
            extra = ("--stop-after-steps", "1") if i == 0 and "resume" not in skip else ()
            rows.append(add_plan(measure(f"dapt-{length}", train_cmd("dapt", model, data, out, length, 2, *extra, flags=flags),
                                         logs), out))
    if "resume" not in skip:
        rows.append(add_plan(measure("resume", train_cmd("dapt", model, data, first, lengths[0], 2, "--resume", flags=flags),
                                     logs), first))
    sft = runs / "sft"
    sft_args = ("--base-adapter", str(first)) if (first / "adapter_model.safetensors").is_file() else ()
    if "sft" not in skip:
        rows.append(add_plan(measure("sft", train_cmd("sft", model, data, sft, a.sft_length, 2, *sft_args, flags=flags), logs),
                             sft))
    if "export" not in skip:
        rows.append(measure("export", [sys.executable, "-c", EXPORT_SNIPPET, str(sft)], logs))
    if "merge" not in skip:
        rows.append(measure("merge", train_cmd("sft", model, data, sft, a.sft_length, 2, *sft_args, "--resume",
                                               "--merge", flags=flags), logs))

    print_table(rows)
    report = {"model_path": str(model), "dapt_lengths": lengths, "sft_length": a.sft_length, "steps": rows}
    out = a.out or work / "scale_check.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"[scale-check] written to {out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
