"""Calibrate the stand-in's contract floor: the tiny preset's flow on several seeds (the good group) and on
deliberately broken pipelines (the broken group), each ended by the post-training check; the floor must lie
between the two groups (docs/recipe.md, "Calibrating the contract floor").

    python -m train.tools.calibrate_floor --work-dir models/calibration [--seeds 0-7,42] [--variants all]

Each run is data (built once) -> DAPT -> SFT on top of it -> `./run.sh check` with the threshold at 0, so that
the check reports its rates without judging; the table goes to WORK_DIR/calibration.json and is printed as
markdown. Broken variants, each a realistic bug:
  no-think-close   the training template's generation block leaves out [/THINK] (strict mode refuses such a
                   template before training; the run shows what happens with strict mode off)
  shifted-labels   SFT labels shifted by one token, as when a collator shifts them and the model shifts again
  lr-20x           SFT at 20x the preset's learning rate
  dapt-strong      DAPT at lr 1e-4 for 80 steps, the strength that made the stand-in forget the contract
  no-assistant-only  SFT on every token of the conversation (assistant-only loss off)
The SFT-only variants reuse the first good seed's DAPT adapter, so that they differ from it in one thing.
A variant's flags come after the preset's, so they win.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT

# SFT-only variants: (extra SFT flags, a context that breaks the pipeline in-process, or None).
SFT_VARIANTS = ("no-think-close", "shifted-labels", "lr-20x", "no-assistant-only")
DAPT_VARIANTS = {"dapt-strong": ["--lr", "1e-4", "--max-steps", "80"]}
VARIANTS = SFT_VARIANTS + tuple(DAPT_VARIANTS)


def parse_seeds(text: str) -> list[int]:
    """'0-7,42' -> [0, 1, ..., 7, 42]."""
    seeds: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def template_without_think_close(out: Path) -> Path:
    """The training template with [/THINK] outside the generation block: everything else stays supervised."""
    template = (PROJECT_ROOT / DEFAULT_TEMPLATE_PATH).read_text(encoding="utf-8")
    begin, stop = template.find("{%- generation %}"), template.find("{%- endgeneration %}")
    if begin < 0 or stop < 0:
        raise SystemExit(f"{DEFAULT_TEMPLATE_PATH}: no generation block found; update this variant")
    old = template[begin:stop + len("{%- endgeneration %}")]
    # Assistant turns carry their reasoning inline ([THINK]...[/THINK]answer), as the SFT data writes them.
    new = ("{%- set parts = render_content(message['content']).split('[/THINK]', 1) %}"
           "{%- generation %}{{- parts[0] }}{%- endgeneration %}"
           "{{- '[/THINK]' if parts | length == 2 else '' }}"
           "{%- generation %}{{- (parts[1] if parts | length == 2 else '') + eos_token }}{%- endgeneration %}")
    out.write_text(template.replace(old, new), encoding="utf-8")
    return out


@contextlib.contextmanager
def shifted_labels():
    """encode_dataset's labels moved one position left: each position is trained on the token after next."""
    import train.masking as masking

    original = masking.encode_dataset

    def shifted(*args, **kwargs):
        kept, summary = original(*args, **kwargs)
        for enc in kept:
            enc.labels[:] = enc.labels[1:] + [masking.IGNORE_INDEX]
        return kept, summary

    masking.encode_dataset = shifted
    try:
        yield
    finally:
        masking.encode_dataset = original


def variant_setup(name: str, work: Path) -> tuple[list[str], contextlib.AbstractContextManager]:
    """The extra SFT flags of an SFT-only variant and the context it trains in."""
    if name == "no-think-close":
        return (["--chat-template-path", str(template_without_think_close(work / "no_think_close.jinja")),
                 "--no-strict-assistant-only-loss"], contextlib.nullcontext())
    if name == "shifted-labels":
        return [], shifted_labels()
    if name == "lr-20x":
        from train.tools.tiny_preset import TINY_SFT
        return ["--lr", f"{20 * float(TINY_SFT[TINY_SFT.index('--lr') + 1]):g}"], contextlib.nullcontext()
    if name == "no-assistant-only":
        return ["--no-assistant-only-loss", "--no-strict-assistant-only-loss"], contextlib.nullcontext()
    raise ValueError(name)


def run_one(label: str, model: Path, data: Path, work: Path, seed: int, precision: str, dapt_flags: list[str],
            sft_flags: list[str], context, reuse_dapt: Path | None, check_limit: int) -> dict:
    from train.main import main as train_main
    from train.tools.tiny_preset import phase_argv
    from train.tools.post_checks import main as check_main

    t0 = time.perf_counter()
    dapt, sft = work / label / "dapt", work / label / "sft"
    if reuse_dapt is None:
        if train_main(phase_argv("dapt", model, data, dapt, True, precision, seed) + dapt_flags) != 0:
            return {"run": label, "seed": seed, "error": f"DAPT failed: {dapt / 'train.log'}"}
    else:
        dapt = reuse_dapt
    with context:
        rc = train_main(phase_argv("sft", model, data, sft, True, precision, seed, base_adapter=dapt) + sft_flags)
    if rc != 0:
        return {"run": label, "seed": seed, "error": f"SFT failed (exit {rc}): {sft / 'train.log'}"}
    check_main(["--run-dir", str(sft), "--limit", str(check_limit), "--threshold", "0"])
    report = json.loads((sft / "post_training_report.json").read_text())
    detail = next(c for c in report["checks"] if c["name"] == "generations_pass_reasoning_contract")["detail"]
    return {"run": label, "seed": seed, "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
            "sampled": {k: detail[k] for k in ("rate", "passed", "total", "broke_contract", "cut_by_budget",
                                               "failure_codes")},
            "greedy": {k: detail["greedy"][k] for k in ("rate", "passed", "total", "broke_contract", "cut_by_budget",
                                                        "failure_codes")},
            "sft_eval_loss_after": json.loads((sft / "training_args.json").read_text())["result"].get("eval_loss_after"),
            "seconds": round(time.perf_counter() - t0)}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | seed | threads | sampled: passed (rate) | broke / cut | greedy: passed (rate) | SFT val loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['seed']} | | {r['error']} | | | |")
            continue
        s, g = r["sampled"], r["greedy"]
        lines.append(f"| {r['run']} | {r['seed']} | {r['threads'] or 'default'} | {s['passed']}/{s['total']} "
                     f"({s['rate']:.1%}) | {s['broke_contract']} / {s['cut_by_budget']} | {g['passed']}/{g['total']} "
                     f"({g['rate']:.1%}) | {r['sft_eval_loss_after']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.calibrate_floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True, help="runs, data and calibration.json go here")
    ap.add_argument("--model-path", type=Path, default=Path("models/tiny-ministral3"), help="the stand-in")
    ap.add_argument("--seeds", default="0-7,42", help="good runs: the preset on these seeds, e.g. 0-7,42")
    ap.add_argument("--variants", default="all", help=f"comma list of {', '.join(VARIANTS)}, 'all' or 'none'")
    ap.add_argument("--variant-seed", type=int, default=42, help="seed of the broken runs")
    ap.add_argument("--check-limit", type=int, default=64, help="validation prompts each check generates for")
    a = ap.parse_args(argv)
    variants = list(VARIANTS) if a.variants == "all" else [] if a.variants == "none" else a.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if not (a.model_path / "stand_in.json").is_file():
        ap.error(f"--model-path {a.model_path}: not a stand-in folder (no stand_in.json); ./run.sh tiny-model first")

    from data.build import main as data_main
    from train.device import default_precision, resolve_device

    work = a.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if data_main(["--out-dir", str(data), "--model-path", str(a.model_path)]) != 0:
        return 1
    precision = default_precision(resolve_device("cpu"))
    out = work / "calibration.json"
    rows = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["run"], r["seed"], r.get("threads")) for r in rows if "error" not in r}
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or None

    def record(row: dict) -> None:
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1))
        print(f"[calibrate] {row['run']} seed {row['seed']}: "
              + (row["error"] if "error" in row else f"sampled {row['sampled']['rate']:.1%}, "
                 f"greedy {row['greedy']['rate']:.1%} ({row['seconds']} s)"), flush=True)

    # The variant seed's good run first (the SFT-only variants reuse its DAPT), then good and broken runs taken
    # in turn, so that a table cut short still has both groups.
    seeds = sorted(parse_seeds(a.seeds), key=lambda s: s != a.variant_seed)
    plan = [run for pair in itertools.zip_longest([("good", s) for s in seeds], [(v, a.variant_seed) for v in variants])
            for run in pair if run]
    first_good = work / f"good-{a.variant_seed}" / "dapt"
    for run, seed in plan:
        label = f"{run}-{seed}" + (f"-t{threads}" if threads else "")
        if (run, seed, threads) in done:
            continue
        if run == "good":
            record(run_one(label, a.model_path, data, work, seed, precision, [], [], contextlib.nullcontext(), None,
                           a.check_limit) | {"run": "good"})
        elif run in DAPT_VARIANTS:
            record(run_one(label, a.model_path, data, work, seed, precision, DAPT_VARIANTS[run], [],
                           contextlib.nullcontext(), None, a.check_limit) | {"run": run})
        else:
            flags, context = variant_setup(run, work)
            reuse = first_good if (first_good / "adapter_model.safetensors").is_file() else None
            record(run_one(label, a.model_path, data, work, seed, precision, [], flags, context, reuse,
                           a.check_limit) | {"run": run})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
