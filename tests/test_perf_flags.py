"""Issue 7: throughput and debugging flags keep the numbers and do what they say."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import lora_model
from train.batching import Row, collate
from train.config import TrainConfig
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


def test_the_model_runs_the_attention_the_project_chose(tiny_text_model_dir):
    """build_model switches the model to choose_attention's pick (not transformers' default) for every --attention."""
    from train.attention import choose_attention
    from train.lora_model import build_model, causal_lm
    from train.pretrained import read_text_config
    text_cfg = read_text_config(tiny_text_model_dir)[0]
    for attention, want in (("auto", "eager"), ("sdpa", "sdpa"), ("eager", "eager")):
        cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32",
                          attention=attention).resolve()
        assert choose_attention(cfg, text_cfg, torch.device("cpu"))[0] == want
        assert causal_lm(build_model(cfg, torch.device("cpu"), lambda _: None)).config._attn_implementation == want
    auto = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir)).resolve()
    assert choose_attention(auto, text_cfg, torch.device("cuda"))[0] == "sdpa"   # fused kernels on a GPU


def test_profile_steps_write_a_trace(tiny_text_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    text = (ROOT / "data/raw/cc65__cpus.txt").read_text(encoding="utf-8")
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(json.dumps({"id": split, "source": "t", "text": text[:3000]}) + "\n")
    out = tmp_path / "o"
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert main(["--phase", "dapt", "--model-path", str(tiny_text_model_dir), "--dapt-dir", str(data),
                     "--output-dir", str(out), "--max-length", "32", "--grad-accum", "1", "--precision", "fp32",
                     "--max-steps", "3", "--profile-steps", "2:3", "--deterministic", "--device", "cpu"]) == 0
        # --deterministic did what it says: deterministic algorithms on, and cuBLAS told how to be repeatable.
        assert torch.are_deterministic_algorithms_enabled()
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert json.loads((out / "training_args.json").read_text())["deterministic"] is True
    finally:
        torch.use_deterministic_algorithms(False)
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
    compile_layers(compiled, "sft")
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


def test_dapt_compiles_static_shapes(tiny_text_model_dir, monkeypatch):
    """Issue 28, item 7: DAPT's blocks all have one length, so its layers compile with static shapes."""
    from train.lora_model import compile_layers, mark_sequence_dynamic
    asked = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: asked.append(kw.get("dynamic", "unset")))
    compile_layers(lora_model(tiny_text_model_dir, phase="dapt"), "dapt")
    assert asked and set(asked) == {False}
    asked.clear()
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw.get("dynamic", "unset")) or fn)
    model = lora_model(tiny_text_model_dir)
    compile_layers(model, "sft")
    # SFT: each layer's forward, dynamic only where the pre-hook marks it (the sequence dimensions)
    layers = causal_lm(model).model.layers
    assert not asked and compiled == [None] * len(layers)
    assert all(list(layer._forward_pre_hooks.values()) == [mark_sequence_dynamic] for layer in layers)


def test_the_sequence_dimensions_are_marked_dynamic():
    from train.lora_model import mark_sequence_dynamic
    hidden, mask, cos = torch.zeros(2, 7, 4), torch.zeros(2, 1, 7, 9), torch.zeros(2, 7, 3)
    mark_sequence_dynamic(None, (hidden,), {"attention_mask": mask, "position_embeddings": (cos, cos)})
    assert hidden._dynamo_weak_dynamic_indices == {1} and mask._dynamo_weak_dynamic_indices == {2, 3}
    assert cos._dynamo_weak_dynamic_indices == {1}
