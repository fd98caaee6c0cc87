"""Issue 27: what a first run prints is for the user: no warnings a user cannot act on, and one line on what
bf16 costs on a CPU that emulates it."""
from __future__ import annotations

import subprocess
import sys
import warnings

import torch

from conftest import PROJECT_ROOT, lora_model

NUMPY_AFTER_FLUSH = "import numpy as np; np.unique(np.array([3, 1, 3]))"   # np.unique imports numpy.ma lazily


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_flushing_denormals_leaves_numpy_quiet():
    done = python(f"from train.device import flush_denormals; flush_denormals(); {NUMPY_AFTER_FLUSH}")
    assert done.returncode == 0, done.stderr
    # The check can fail: flushing before numpy.ma is imported makes numpy warn about its float limits.
    bare = python(f"import torch; torch.set_flush_denormal(True); {NUMPY_AFTER_FLUSH}")
    assert bare.returncode != 0 and "smallest subnormal" in bare.stderr


def test_lora_model_builds_without_future_warnings(tiny_text_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        lora_model(tiny_text_model_dir)


def test_bf16_on_a_cpu_that_emulates_it_says_what_it_costs(monkeypatch):
    import train.device as device
    import train.flops as flops
    peaks = {torch.float32: 8e9, torch.bfloat16: 2e9}
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda dev, dtype, size, seconds: peaks[dtype])
    cpu, said = torch.device("cpu"), []
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    line = device.note_emulated_bf16(cpu, "bf16", said.append)
    assert said == [line] and "4.0x as long here as in fp32" in line and "--precision fp32" in line
    assert device.note_emulated_bf16(cpu, "fp32", said.append) is None
    assert device.note_emulated_bf16(torch.device("cuda"), "bf16", said.append) is None
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.note_emulated_bf16(cpu, "bf16", said.append) is None and len(said) == 1
