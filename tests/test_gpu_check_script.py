"""train/tools/gpu_check.sh fails when a step fails, runs the other steps anyway, and says which failed in its JSON.

No GPU here, so the script runs under a stand-in interpreter that answers the script's environment probe as a
one-GPU machine would and lets each step succeed or fail as the test asks; the script's own report runs on the
real interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
# the environment probe: '-' with the environment.json path; the report: '-' with the output folder
if [[ "$1" == "-" && "$2" == *environment.json ]]; then
  cat > /dev/null; echo '{"gpu": "Fake GPU", "gpus": 1}' > "$2"; exit 0
fi
if [[ "$1" == "-" ]]; then exec "$REAL_PYTHON" "$@"; fi
if [[ "$1" == "-c" && "$2" == *device_count* ]]; then echo 1; exit 0; fi
if [[ "$1" == "-c" ]]; then exit 0; fi
if [[ "$1 $2" == "-m pytest" ]]; then echo "1 passed"; exit "$FAIL_TESTS"; fi
if [[ "$1 $2" == "-m train.tools.bench" ]]; then echo "bench $*"; exit "$FAIL_BENCH"; fi
exit 3
"""


def run_check(tmp_path: Path, fail_tests: int, fail_bench: int) -> tuple[int, dict, str]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), REAL_PYTHON=sys.executable,
               FAIL_TESTS=str(fail_tests), FAIL_BENCH=str(fail_bench))
    p = subprocess.run(["bash", str(ROOT / "train/tools/gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    return p.returncode, json.loads((out / "gpu_check.json").read_text()), p.stdout + p.stderr


@pytest.mark.parametrize("fail_tests, fail_bench, failed", [
    (0, 0, []), (1, 0, ["cuda_tests"]), (0, 1, ["bench_dapt", "bench_sft"]),
])
def test_a_failed_step_fails_the_script_and_the_others_still_run(tmp_path, fail_tests, fail_bench, failed):
    rc, report, log = run_check(tmp_path, fail_tests, fail_bench)
    assert (rc != 0) == bool(failed), log
    assert report["failed_steps"] == failed
    assert [s["name"] for s in report["steps"]] == ["bench_dapt", "bench_sft", "cuda_tests"]
    assert report["environment"]["gpu"] == "Fake GPU"


def test_no_gpu_stops_the_script_with_the_reason(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    p = subprocess.run(["bash", str(ROOT / "train/tools/gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "[gpu-check] no usable GPU" in p.stderr
