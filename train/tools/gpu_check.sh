#!/usr/bin/env bash
# The 8B figures on one GPU, in about 8 minutes (docs/performance.md, "GPU at the 8B shapes"):
#   1. the CUDA tests (tests/test_cuda.py: bf16 autocast, fused AdamW, the labels-only loss under autocast,
#      a 2-step tiny run, the memory plan against torch.cuda.max_memory_allocated at real width);
#   2. ./run.sh bench --preset 8b (random 8B weights built on the GPU; micro-batch 2 x 2048, accumulation 16),
#      without and with activation checkpointing;
#   3. a summary: tokens/s, MFU against the matmul peak measured on the spot, peak memory, the memory plan.
#
#   bash train/tools/gpu_check.sh            (from anywhere; PYTHON=... picks the interpreter, OUT=... the folder)
#
# It runs the interpreter as it is, without ./run.sh setup and without network: torch with CUDA, transformers
# (5.17 or newer) and peft must be installed. Wheels found in ./wheels (docs/performance.md says how to
# download them) are installed into ./.gpu-site first and take precedence; pytest comes from there too when
# the interpreter lacks it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-scratch/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
if compgen -G "wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target .gpu-site wheels/*.whl
  export PYTHONPATH="$PWD/.gpu-site:$PYTHONPATH"
fi

"$PY" - <<'EOF'
import sys

import peft
import torch
import transformers

print(f"[gpu-check] python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}", flush=True)
if not torch.cuda.is_available():
    from train.device import no_cuda_reason
    sys.exit(f"[gpu-check] no usable GPU: {no_cuda_reason()}")
p = torch.cuda.get_device_properties(0)
print(f"[gpu-check] {p.name}, {p.total_memory / 2**30:.0f} GiB", flush=True)
EOF

start=$SECONDS
if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt" || true
else
  echo "[gpu-check] pytest is not installed: CUDA tests skipped (put its wheels in ./wheels)" | tee "$OUT/cuda_tests.txt"
fi
echo "[gpu-check] CUDA tests: $((SECONDS - start)) s"

for ckpt in "" "--gradient-checkpointing"; do
  name="8b${ckpt:+_ckpt}"
  start=$SECONDS
  "$PY" -m train.tools.bench --preset 8b $ckpt --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt" || true
  echo "[gpu-check] bench $name: $((SECONDS - start)) s"
done

"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print("\n[gpu-check] 8B bench (micro-batch 2 x 2048, accumulation 16, LoRA r16, bf16)")
print(f"{'checkpointing':<15}{'tokens/s':>10}{'MFU':>8}{'matmul peak TFLOP/s':>21}{'peak GiB':>10}{'plan GiB':>10}{'plan error':>12}")
for name, label in (("8b", "off"), ("8b_ckpt", "on")):
    f = out / f"{name}.json"
    if not f.is_file():
        print(f"{label:<15}  (no result: see {out / (name + '.txt')})")
        continue
    r = json.loads(f.read_text())["runs"][0]["ours"]
    peak, plan = r["peak_memory_MiB"] / 1024, r["predicted_peak_MiB"] / 1024
    print(f"{label:<15}{r['all_tokens_per_s']:>10.0f}{r['mfu']:>8.1%}{r['matmul_peak_flops'] / 1e12:>21.0f}"
          f"{peak:>10.2f}{plan:>10.2f}{(peak - plan) / peak:>+12.1%}")
tests = (out / "cuda_tests.txt").read_text().strip().splitlines()
print(f"[gpu-check] CUDA tests: {tests[-1] if tests else 'no output'}")
print(f"[gpu-check] results in {out}/")
EOF
