"""Issue 7: throughput and debugging flags keep the numbers and do what they say."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import lora_model
from train.batching import Row, collate
from train.loss import labels_only_loss_sum
from train.main import main
from train.lora_model import causal_lm

ROOT = Path(__file__).resolve().parent.parent


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = labels_only_loss_sum(causal_lm(model), batch, 16)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_activation_checkpointing_keeps_loss_and_lora_grads(tiny_text_model_dir):
    rows = [Row("a", list(range(1000, 1040)), [-100] * 10 + list(range(1010, 1040))),
            Row("b", list(range(2000, 2025)), [-100] * 5 + list(range(2005, 2025)))]
    batch = collate(rows)
    out = {}
    for ckpt in (False, True):
        model = lora_model(tiny_text_model_dir, gradient_checkpointing=ckpt)
        model.train()
        out[ckpt] = _grads(model, batch)
    assert torch.allclose(out[False][0], out[True][0], rtol=1e-6)
    assert out[False][1].keys() == out[True][1].keys() and out[True][1]
    for n in out[False][1]:
        assert torch.allclose(out[False][1][n], out[True][1][n], rtol=1e-5, atol=1e-7), n


def test_model_uses_sdpa_attention(tiny_text_model_dir):
    from train.pretrained import load_text_model
    assert load_text_model(tiny_text_model_dir).config._attn_implementation == "sdpa"


def test_profile_steps_write_a_trace(tiny_text_model_dir, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    text = (ROOT / "data/raw/cc65__cpus.txt").read_text(encoding="utf-8")
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(json.dumps({"id": split, "source": "t", "text": text[:3000]}) + "\n")
    out = tmp_path / "o"
    assert main(["--phase", "dapt", "--model-path", str(tiny_text_model_dir), "--dapt-dir", str(data), "--output-dir",
                 str(out), "--max-length", "32", "--grad-accum", "1", "--precision", "fp32", "--max-steps", "3",
                 "--profile-steps", "2:3", "--deterministic", "--device", "cpu"]) == 0
    trace = out / "profile" / "trace-steps2-3-rank0.json"
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"forward", "backward", "optimizer"} <= names


def test_compile_keeps_loss_and_grads_across_row_lengths(tiny_text_model_dir):
    # Three lengths: the first call compiles, the others must reuse the dynamic graph, not fall back.
    import torch._dynamo
    from train.lora_model import compile_layers
    torch._dynamo.reset()
    batches = [collate([Row("a", list(range(1000, 1000 + n)), [-100] * 5 + list(range(1005, 1000 + n)))] * 2)
               for n in (24, 37, 51)]
    eager, compiled = lora_model(tiny_text_model_dir), lora_model(tiny_text_model_dir)
    compile_layers(compiled)
    for model in (eager, compiled):
        model.train()
    graphs = []
    for batch in batches:
        (le, ge), (lc, gc) = _grads(eager, batch), _grads(compiled, batch)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        assert torch.allclose(le, lc, rtol=1e-5), (le, lc)
        for n in ge:  # fused kernels reorder float sums: compare whole tensors, not elements
            assert (ge[n] - gc[n]).norm() <= 1e-4 * ge[n].norm(), n
    assert graphs[0] > 0 and graphs[1:] == [graphs[0]] * 2, f"graphs after each length: {graphs} (recompiled)"
