#!/usr/bin/env bash
# The GPU check: every CUDA-only path and the 8B figures on one GPU, in at most 8 minutes (docs/performance.md,
# "GPU at the 8B shapes"). Each step has a time limit; a step that fails or runs out of time is recorded and the
# others still run, and the script exits non-zero when any step failed. Steps:
#   1. the CUDA-gated tests (pytest -m cuda);
#   2. both phases at the 8B shape with random weights, ~30 optimizer steps each at the recipe's micro-batch
#      2 x 2048 (accumulation 4: the figures are per token, and 16 would not fit the time), under the default
#      memory plan: tokens/s, MFU against the datasheet bf16 peak, peak allocated and reserved memory against
#      the plan's prediction;
#   3. with 2 or more GPUs, a 2-process torchrun (NCCL) of the tiny model under --fsdp.
# It writes $OUT/gpu_check.json (one JSON of figures, quoted by docs/performance.md) and the logs beside it.
#
#   bash train/tools/gpu_check.sh            (from anywhere; PYTHON=... picks the interpreter, OUT=... the folder)
#
# It runs the interpreter as it is, without ./run.sh setup and without network: torch with CUDA, transformers
# and peft must be installed. Wheels found in ./wheels are installed into ./.gpu-site first and take
# precedence; pytest comes from there too when the interpreter lacks it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-scratch/gpu}"
mkdir -p "$OUT"
rm -f "$OUT"/step_*.json "$OUT"/bench_*.json "$OUT/gpu_check.json"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
if compgen -G "wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target .gpu-site wheels/*.whl
  export PYTHONPATH="$PWD/.gpu-site:$PYTHONPATH"
fi

# The environment first: without a GPU nothing below means anything, so this one stops the script.
"$PY" - "$OUT/environment.json" <<'EOF'
import json
import sys

import peft
import torch
import transformers

if not torch.cuda.is_available():
    from train.device import no_cuda_reason
    sys.exit(f"[gpu-check] no usable GPU: {no_cuda_reason()}")
p = torch.cuda.get_device_properties(0)
env = {"gpu": p.name, "gpu_memory_GiB": round(p.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
       "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "transformers": transformers.__version__, "peft": peft.__version__}
json.dump(env, open(sys.argv[1], "w"))
print(f"[gpu-check] {env}", flush=True)
EOF

failed=0
# step NAME SECONDS COMMAND...: run COMMAND under a time limit, log it to $OUT/NAME.log, record its status.
step() {
  local name="$1" limit="$2" start=$SECONDS rc=0
  shift 2
  echo "[gpu-check] $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 5 "$OUT/$name.log"
  if [[ $rc -ne 0 ]]; then
    failed=1
    echo "[gpu-check] $name FAILED (exit $rc; 124 means it ran out of time)"
  fi
  printf '{"name": "%s", "exit": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - start))" > "$OUT/step_$name.json"
}

if "$PY" -c "import pytest" 2>/dev/null; then
  step cuda_tests 170 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests/
else
  echo "[gpu-check] pytest is not installed (put its wheels in ./wheels)"
  printf '{"name": "cuda_tests", "exit": 127, "seconds": 0}\n' > "$OUT/step_cuda_tests.json"
  failed=1
fi

for phase in dapt sft; do
  step "bench_$phase" 130 "$PY" -m train.tools.bench --preset 8b --phase "$phase" --steps 30 --accum 4 \
    --device cuda --out "$OUT/bench_$phase.json"
done

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -ge 2 ]]; then
  step torchrun_fsdp 90 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_fsdp.py::test_fsdp_on_two_gpus
else
  echo "[gpu-check] torchrun_fsdp: skipped, $gpus GPU on this machine"
fi

"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
report = {"environment": json.loads((out / "environment.json").read_text()),
          "steps": [json.loads(f.read_text()) for f in sorted(out.glob("step_*.json"))], "phases": {}}
tests = out / "cuda_tests.log"
report["cuda_tests_summary"] = tests.read_text().strip().splitlines()[-1] if tests.is_file() else None
print(f"\n[gpu-check] 8B, random weights, micro-batch 2 x 2048, LoRA r16, bf16, default memory plan")
print(f"{'phase':<6}{'ckpt':>5}{'tok/s':>9}{'MFU':>7}{'MFU(meas)':>10}{'alloc GiB':>10}{'resv GiB':>9}"
      f"{'plan GiB':>9}{'plan err':>9}")
for phase in ("dapt", "sft"):
    f = out / f"bench_{phase}.json"
    if not f.is_file():
        print(f"{phase:<6} no result: see {out / ('bench_' + phase + '.log')}")
        continue
    r = json.loads(f.read_text())["runs"][0]["ours"]
    keys = ("all_tokens_per_s", "trained_tokens_per_s", "mfu", "mfu_peak_source", "mfu_measured_peak",
            "matmul_peak_flops", "peak_memory_MiB", "peak_reserved_MiB", "predicted_peak_MiB", "predicted_parts_MiB",
            "gradient_checkpointing", "share_prefix", "attention", "optimizer_steps", "warmup_steps", "accum",
            "s_per_optimizer_step", "losses")
    fig = report["phases"][phase] = {k: r[k] for k in keys}
    fig["plan_error"] = round((r["peak_memory_MiB"] - r["predicted_peak_MiB"]) / r["peak_memory_MiB"], 4)
    print(f"{phase:<6}{'on' if fig['gradient_checkpointing'] else 'off':>5}{fig['all_tokens_per_s']:>9.0f}"
          f"{fig['mfu']:>7.1%}{fig['mfu_measured_peak']:>10.1%}{fig['peak_memory_MiB'] / 1024:>10.2f}"
          f"{fig['peak_reserved_MiB'] / 1024:>9.2f}{fig['predicted_peak_MiB'] / 1024:>9.2f}{fig['plan_error']:>+9.1%}")
report["failed_steps"] = [s["name"] for s in report["steps"] if s["exit"] != 0]
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(f"[gpu-check] CUDA tests: {report['cuda_tests_summary']}")
print(f"[gpu-check] figures in {out / 'gpu_check.json'}; failed steps: {report['failed_steps'] or 'none'}")
EOF

exit "$failed"
