"""Issue 18, items 5 and 6: no silent CPU fallback for a large model, and the CUDA paths (run on a GPU host,
skipped with a reason elsewhere)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_dapt_data
from train import device as device_mod
from train.main import main

needs_cuda = pytest.mark.cuda   # skipped without a GPU (conftest.py); gpu_check.sh runs every such test


@pytest.fixture
def config_only_8b(tmp_path) -> Path:
    """A folder with only the 8B-shape config.json: the refusal must come before any weight is looked for."""
    from train.tools.random_model import vlm_config
    folder = tmp_path / "8b-config-only"
    vlm_config("8b").save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------ item 5: no silent CPU fallback


def test_auto_refuses_a_large_model_without_a_gpu_and_says_why(config_only_8b, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    rc = main(["--phase", "dapt", "--model-path", str(config_only_8b), "--dapt-dir", str(tmp_path / "none"),
               "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "--device auto found no usable GPU for a 8.5 B-parameter model" in err
    assert "CPU-only build" in err and "pass --device cpu" in err


def test_device_cpu_insists(config_only_8b, tmp_path, capsys):
    """With --device cpu the refusal does not apply: the run goes on to its next check (here: no data)."""
    rc = main(["--phase", "dapt", "--model-path", str(config_only_8b), "--dapt-dir", str(tmp_path / "none"),
               "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "no usable GPU" not in err and "tokenizer.json: missing" in err


def test_small_models_still_fall_back_to_the_cpu():
    device_mod.refuse_silent_cpu("auto", device_mod.LARGE_MODEL_PARAMS)  # the tiny flow keeps working


class FakeLibcuda:
    def __init__(self, version: int, init_status: int = 0):
        self.version, self.init_status = version, init_status

    def cuDriverGetVersion(self, ref):
        ref._obj.value = self.version
        return 0

    def cuInit(self, flags):
        return self.init_status


@pytest.mark.parametrize("torch_cuda, visible, libcuda, words", [
    (None, None, None, "CPU-only build"),
    ("13.0", "", FakeLibcuda(13000), "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    ("13.0", None, OSError, "no NVIDIA driver was found"),
    ("13.0", None, FakeLibcuda(12040), "supports CUDA up to 12.4, but this torch was built for CUDA 13.0"),
    ("13.0", None, FakeLibcuda(13000, init_status=100), "cuInit error 100"),
])
def test_no_cuda_reason_names_the_cause(monkeypatch, torch_cuda, visible, libcuda, words):
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    def fake_cdll(name):
        if libcuda is OSError:
            raise OSError(name)
        return libcuda
    monkeypatch.setattr(device_mod.ctypes, "CDLL", fake_cdll)
    assert words in device_mod.no_cuda_reason()


# ---------------------------------------------------------------------------------- item 6: on a GPU


@needs_cuda
def test_bf16_autocast_on_cuda_runs_matmuls_in_bf16_with_fp32_adapters(tiny_text_model_dir):
    from train.config import TrainConfig
    from train.device import autocast
    from train.lora_model import build_model, causal_lm
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="bf16").resolve()
    model = build_model(cfg, torch.device("cuda"), lambda _: None)
    lm = causal_lm(model)
    assert lm.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    seen = {}
    lm.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.dtype))
    with autocast(torch.device("cuda"), "bf16"):
        lm(input_ids=torch.tensor([[1, 1500, 1600, 1700]], device="cuda"))
    assert seen["out"] == torch.bfloat16


@needs_cuda
def test_labels_only_loss_matches_full_logits_with_bf16_weights_and_sdpa_on_cuda(tiny_text_model_dir):
    """The loop's own build on the GPU (bf16 base weights read to the device, SDPA chosen there), not fp32 CPU weights
    moved over: the lean loss against the full-logits reference under autocast."""
    from train.batching import Row, collate, to_device
    from train.config import TrainConfig
    from train.device import autocast
    from train.loss import full_logits_loss_sum, labels_only_loss_sum
    from train.lora_model import build_model, causal_lm
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="bf16", lora_dropout=0.0).resolve()
    model = build_model(cfg, torch.device("cuda"), lambda _: None)
    lm = causal_lm(model)
    assert lm.config._attn_implementation == "sdpa"
    assert lm.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert lm.model.layers[0].mlp.up_proj.base_layer.weight.device.type == "cuda"
    with torch.no_grad():   # non-zero B matrices, so every adapter tensor gets a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    rows = [Row("a", list(range(1000, 1040)), [-100] * 10 + list(range(1010, 1040))),
            Row("b", list(range(2000, 2025)), [-100] * 5 + list(range(2005, 2025)))]
    batch = to_device(collate(rows), torch.device("cuda"))
    grads = []
    for fn in (lambda: labels_only_loss_sum(lm, batch, 16), lambda: full_logits_loss_sum(lm, batch)):
        model.zero_grad(set_to_none=True)
        with autocast(torch.device("cuda"), "bf16"):
            loss = fn()
        loss.backward()
        grads.append((loss.detach().float(), [p.grad.float().clone() for p in model.parameters() if p.requires_grad]))
    (l1, g1), (l2, g2) = grads
    assert torch.allclose(l1, l2, rtol=2e-2), (l1, l2)
    for a, b in zip(g1, g2):
        assert ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < 5e-2


@needs_cuda
def test_batches_go_to_the_gpu_from_pinned_memory(monkeypatch):
    from train.batching import Row, collate, to_device
    pinned = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.shape) or real(self, *a))
    batch = collate([Row("a", [1, 2, 3, 4], [-100, 2, 3, 4]), Row("b", [1, 2, 5], [-100, 2, 5])])
    moved = to_device(batch, torch.device("cuda"))
    tensors = [k for k, v in batch.items() if torch.is_tensor(v)]
    assert len(pinned) == len(tensors) and all(moved[k].is_cuda for k in tensors)
    assert torch.equal(moved["input_ids"].cpu(), batch["input_ids"])


@needs_cuda
def test_two_step_run_on_cuda_with_fused_adamw(tiny_text_model_dir, tmp_path, monkeypatch):
    import train.main as loop
    made = {}
    real_adamw = torch.optim.AdamW

    def recording_adamw(*args, **kw):
        made["fused"] = kw.get("fused")
        return real_adamw(*args, **kw)
    monkeypatch.setattr(loop.torch.optim, "AdamW", recording_adamw)
    out = tmp_path / "run"
    rc = main(["--phase", "dapt", "--model-path", str(tiny_text_model_dir), "--dapt-dir", str(write_dapt_data(tmp_path / "dapt")),
               "--output-dir", str(out), "--max-length", "64", "--micro-batch-size", "2", "--grad-accum", "2",
               "--max-steps", "2", "--eval-max-batches", "1", "--device", "cuda"])
    assert rc == 0 and made["fused"] is True
    args = json.loads((out / "training_args.json").read_text())
    assert args["resolved"]["device"].startswith("cuda") and args["resolved"]["attention"] == "sdpa"
    assert args["memory_plan"]["measured_kind"] == "torch.cuda.max_memory_allocated"
    plan = args["memory_plan"]
    assert plan["measured_reserved_MiB"] >= plan["measured_peak_MiB"] > 0 and plan["reserve_MiB"] == 1024
    assert args["resolved"]["mfu_peak_source"] and args["resolved"]["measured_matmul_flops"] > 0
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)


@needs_cuda
def test_memory_plan_matches_max_memory_allocated_at_real_width(monkeypatch, tmp_path):
    """The plan against torch.cuda.max_memory_allocated on the 8B's widths and vocabulary at reduced depth
    (the bench's random model built on the GPU, the loop's own step)."""
    from train.tools import bench
    shapes = bench.PRESETS["8b"]["shapes"] | {"num_hidden_layers": 4}
    for ckpt in (False, True):
        monkeypatch.setitem(bench.PRESETS, "8b", dict(shapes=shapes, max_length=2048, micro_batch=2, accum=2, steps=2))
        out = tmp_path / f"b{ckpt}.json"
        argv = ["--preset", "8b", "--device", "cuda", "--out", str(out)] + (["--gradient-checkpointing"] if ckpt else [])
        assert bench.main(argv) == 0
        r = json.loads(out.read_text())["runs"][0]["ours"]
        assert r["peak_memory_kind"] == "torch.cuda.max_memory_allocated"
        error = abs(r["peak_memory_MiB"] - r["predicted_peak_MiB"]) / r["peak_memory_MiB"]
        assert error <= 0.10, (ckpt, r["predicted_peak_MiB"], r["peak_memory_MiB"])
