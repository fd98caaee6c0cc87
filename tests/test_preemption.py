"""Issue 20: SIGTERM at a random step ends the run after that step with a checkpoint and exit 75; a restart with
--resume auto finishes it bit-identically to an uninterrupted run, with one process and under torchrun."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_distributed import TORCHRUN, small_dapt, torchrun  # noqa: F401  (small_dapt is a fixture used here)
from test_distributed import args as dist_args
from test_training_loop import dapt_args, dapt_dir  # noqa: F401  (dapt_dir is a fixture used here)
from train import checkpointing
from train.main import main
from train.preemption import EXIT_STOPPED, StopSignals

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8


def train_steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    # The last line may be half written while the run appends to it.
    records = [json.loads(line) for line in lines if line.endswith("}")]
    return max((r["step"] for r in records if r["kind"] == "train"), default=0)


def signal_at_step(cmd: list[str], out: Path, step: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """Start cmd, send SIGTERM once metrics.jsonl shows `step` finished, and wait for the process to end."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while train_steps_logged(out) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


def assert_same_adapter(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


def test_sigterm_at_a_random_step_then_resume_auto_is_bit_identical(tiny_text_model_dir, dapt_dir,  # noqa: F811
                                                                    tmp_path):
    def args(out):
        return dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", str(STEPS), "--device", "cpu",
                         "--resume", "auto")

    reference = tmp_path / "reference"
    assert main(args(reference)) == 0  # --resume auto with no checkpoint yet: a fresh start
    assert "--resume auto: no checkpoint" in (reference / "train.log").read_text()

    at = random.randint(1, STEPS - 4)
    print(f"SIGTERM once step {at} is logged")  # shown when the test fails, to reproduce it
    out = tmp_path / "stopped"
    proc = signal_at_step([sys.executable, "-m", "train.main", *args(out)], out, at)
    assert proc.returncode == EXIT_STOPPED, proc.stderr[-3000:]
    stopped = checkpointing.latest_valid_checkpoint(out / "checkpoints", print)["step"]
    assert at <= stopped < STEPS
    log = (out / "train.log").read_text()
    assert f"SIGTERM received: stopped after step {stopped} of {STEPS} with a checkpoint" in log
    assert "Traceback" not in proc.stderr
    assert not (out / "adapter_model.safetensors").exists() and (out / "report.html").is_file()

    assert main(args(out)) == 0
    assert f"at step {stopped} " in (out / "train.log").read_text().split("resumed from")[-1]
    assert_same_adapter(reference, out)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_after_one_step(tiny_text_model_dir, small_dapt, tmp_path):  # noqa: F811
    def args(out):
        return dist_args(tiny_text_model_dir, small_dapt, out, 2, "--resume", "auto", "--device", "cpu")

    reference = tmp_path / "reference"
    torchrun(args(reference), tmp_path)
    out = tmp_path / "stopped"
    at = random.randint(1, 2)  # of 5 steps: the signal reaches the processes well before the last one
    print(f"SIGTERM to torchrun once step {at} is logged")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = signal_at_step([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "train/main.py"),
                           *args(out)], out, at, env)
    # torchrun forwards the signal to both processes, waits for them, then exits 1 (its own SignalException).
    assert proc.returncode != 0
    stopped = checkpointing.latest_valid_checkpoint(out / "checkpoints", print)["step"]
    assert at <= stopped < 5
    for rank in (0, 1):
        assert f"rank{rank} SIGTERM received: stopped after step {stopped} of 5" in proc.stderr, proc.stderr[-3000:]
    torchrun(args(out), tmp_path)
    assert_same_adapter(reference, out)


def test_a_signal_only_asks_for_a_stop(monkeypatch):
    from train.distributed import DistInfo
    before = signal.getsignal(signal.SIGINT)
    stop = StopSignals()
    assert stop.install()
    try:
        assert not stop.stop_agreed(DistInfo(), "cpu")
        os.kill(os.getpid(), signal.SIGINT)   # no KeyboardInterrupt: the step in progress finishes
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert stop.received == "SIGINT" and stop.stop_agreed(DistInfo(), "cpu")
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before
