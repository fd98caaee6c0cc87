#!/usr/bin/env bash
# One entry point for every job of the toolkit. Each verb first makes sure .venv is set up
# (cheap when nothing changed), then hands over to a Python module, so every verb can also be
# run as `python -m <module>` inside the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

usage() {
  cat <<'TXT'
Usage: ./run.sh [VERB] [FLAGS...]

  ./run.sh                          full flow on the defaults: data -> DAPT -> SFT -> post-training checks ->
                                    C64 evaluation of base, DAPT and SFT (uses the cached STAND-IN model, built
                                    on first use, when models/Ministral-3-8B-Thinking is absent)
  ./run.sh flow [FLAGS]             the same full flow with its own flags (--help lists them)
  ./run.sh --phase dapt|sft FLAGS   one training phase (python -m train.main; see --phase dapt --help)
  ./run.sh setup                    create .venv and install requirements (idempotent)
  ./run.sh test [PYTEST ARGS]       the test suite (what .ci/run calls)
  ./run.sh tiny-model --out DIR [--text-only] [--seed N] [--untrained] [--force]
                                    build (or reuse) the stand-in: a tiny Ministral 3 pretrained on generic
                                    material to answer in the reasoning contract
  ./run.sh random-model --shape 8b --out DIR [--layers N] [--seed S]
                                    random-weight checkpoint in the released 8B layout (~17 GB at full depth)
  ./run.sh scale-check --model-path DIR --work-dir DIR
                                    each step of the flow on that folder in its own process: time, peak RSS, memory plan
  ./run.sh data [--raw-dir DIR] [--out-dir data/processed] [--model-path M]
                                    processed DAPT/SFT data + validation_report.json
  ./run.sh inspect --model-path M --sft-dir D [--chat-template-path T] [--limit N] [--out FILE.jsonl]
                                    show input_ids / labels / supervised spans per SFT example
  ./run.sh check --run-dir DIR      post-training checks -> DIR/post_training_report.json
  ./run.sh chat --model-path M [--adapter RUN_DIR] [--prompt TEXT]
                                    talk to a model (interactive, or one answer with --prompt)
  ./run.sh export RUN_DIR [--merge] [--format hf|gguf] [--out DIR]
                                    vlm_adapter/ (lineage included), with --merge a merged model folder, with
                                    --format gguf a GGUF file (llama.cpp's converter), serve files next to each
  ./run.sh serve-check URL --model-path M [--adapter RUN_DIR] [--base-model NAME]
                                    a served model (OpenAI API) against local transformers: greedy agreement,
                                    contract rate, whether the adapter changed anything
  ./run.sh report RUN_DIR... [--out FILE]
                                    rebuild RUN_DIR/report.html; several run folders share the axes
  ./run.sh eval --model-path M [--adapter DIR] [--out FILE]
                                    C64 evaluation: held-out facts, contract, document loss -> eval_report.json
  ./run.sh bench [--preset cpu|8b] [--out FILE.json]
                                    speed and memory figures
  ./run.sh bench-trl [--precision fp32|bf16] [--repeat N] [--out FILE.json]
                                    the cpu bench against TRL's SFTTrainer on the bench fixture (builds
                                    .venv-trl/ with requirements-trl.txt and scratch/bench-fixture/ first)

Every verb takes --help for its own flags. Multi-process: torchrun --nproc_per_node=N train/main.py --phase ...
GPU figures (no setup, no network): bash train/tools/gpu_check.sh
TXT
}

# A venv's stamp holds the hash of the requirement files it was set up from, so set-up re-runs pip only when
# one of them changed. venv_current DIR FILE...: whether DIR is set up from exactly these files.
venv_current() {
  local dir="$1"; shift
  [[ -x "$dir/bin/python" && -f "$dir/.setup-stamp" && "$(cat "$dir/.setup-stamp")" == "$(cat "$@" | sha256sum | cut -d' ' -f1)" ]]
}
venv_create() {
  [[ -x "$1/bin/python" ]] || python3 -m venv "$1"
  "$1/bin/python" -m pip install --quiet --upgrade pip >&2
}
venv_stamp() {
  local dir="$1"; shift
  cat "$@" | sha256sum | cut -d' ' -f1 > "$dir/.setup-stamp"
}

setup() {
  local files=(requirements.txt requirements-dev.txt pyproject.toml)
  venv_current "$VENV" "${files[@]}" && return 0
  echo "[setup] creating/updating $VENV" >&2
  venv_create "$VENV"
  # requirements.txt pins torch==2.13.0: the CPU wheel here, the CUDA wheel from PyPI on a GPU box.
  "$PY" -m pip install --quiet -r requirements.txt -r requirements-dev.txt >&2
  # setuptools warns that folders named like the packages may shadow them: here they are the packages.
  PYTHONWARNINGS=ignore "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >&2
  venv_stamp "$VENV" "${files[@]}"
  echo "[setup] done" >&2
}

# The run report's browser test (tests/test_report.py) needs Chromium, a Debian package. Install it when it is
# missing and apt-get can (as root); otherwise that test skips with the reason, or fails when CI=true.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium (Debian package) for the report's browser test" >&2
    local log; log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           chromium; } >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      echo "[test] chromium could not be installed; the browser test will say so" >&2
    fi
    rm -f "$log"
  fi
}

# The TRL baseline runs in its own venv, so TRL and its dependencies never enter the project's. pip's cache
# is kept (no --no-cache-dir): a rebuild after a pin change reuses the wheels it already has.
TRL_VENV="${TRL_VENV:-$ROOT/.venv-trl}"
BENCH_FIXTURE="${BENCH_FIXTURE:-$ROOT/scratch/bench-fixture}"
trl_setup() {
  venv_current "$TRL_VENV" requirements-trl.txt && return 0
  echo "[bench-trl] creating/updating $TRL_VENV from requirements-trl.txt (several minutes the first time)" >&2
  venv_create "$TRL_VENV"
  "$TRL_VENV/bin/python" -m pip install --quiet -r requirements-trl.txt >&2
  venv_stamp "$TRL_VENV" requirements-trl.txt
}

bench_trl() {
  trl_setup
  # The fixture is built once (deterministic from its seed); delete the folder to build it again.
  if [[ ! -f "$BENCH_FIXTURE/fixture.json" ]]; then
    "$PY" -m train.tools.bench_fixture --out "$BENCH_FIXTURE"
  fi
  exec "$PY" -m train.tools.bench --preset cpu --fixture "$BENCH_FIXTURE" --trl-python "$TRL_VENV/bin/python" \
    --trl-script "$ROOT/train/tools/trl_baseline.py" "$@"
}

verb="${1:-}"
case "$verb" in
  -h|--help|help) usage; exit 0 ;;
  setup) setup; exit 0 ;;
esac

setup
export PYTHONUNBUFFERED=1
case "$verb" in
  "")          exec "$PY" -m train.tools.flow ;;
  test)        shift; ensure_chromium; exec "$PY" -m pytest "$@" ;;
  tiny-model)  shift; exec "$PY" -m train.tools.tiny_model "$@" ;;
  random-model) shift; exec "$PY" -m train.tools.random_model "$@" ;;
  scale-check) shift; exec "$PY" -m train.tools.scale_check "$@" ;;
  data)        shift; exec "$PY" -m data.build "$@" ;;
  inspect)     shift; exec "$PY" -m train.tools.inspect_labels "$@" ;;
  check)       shift; exec "$PY" -m train.tools.post_checks "$@" ;;
  chat)        shift; exec "$PY" -m train.tools.chat "$@" ;;
  export)      shift; exec "$PY" -m train.tools.export_run "$@" ;;
  serve-check) shift; exec "$PY" -m train.tools.serve_check "$@" ;;
  report)      shift; exec "$PY" -m train.report "$@" ;;
  eval)        shift; exec "$PY" -m train.tools.evaluate "$@" ;;
  bench)       shift; exec "$PY" -m train.tools.bench "$@" ;;
  bench-trl)   shift; bench_trl "$@" ;;
  flow)        shift; exec "$PY" -m train.tools.flow "$@" ;;
  --*)         exec "$PY" -m train.main "$@" ;;
  *) echo "run.sh: unknown verb '$verb'" >&2; usage >&2; exit 2 ;;
esac
