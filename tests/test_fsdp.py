"""--fsdp: FSDP2 (fully_shard) under torchrun, 2 CPU processes on gloo, against 1 process with the same global batch."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from test_distributed import args, losses, small_dapt, torchrun  # noqa: F401  (small_dapt is a fixture)
from train.config import ConfigError, parse_args, validate_args
from train.main import main


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_exactly(tiny_text_model_dir, small_dapt, tmp_path):  # noqa: F811
    one = tmp_path / "one"
    assert main(args(tiny_text_model_dir, small_dapt, one, 4)) == 0
    two = tmp_path / "fsdp"
    torchrun(args(tiny_text_model_dir, small_dapt, two, 2, "--fsdp"), tmp_path)

    # Same rows per step and the same global token normalisation; FSDP changes only where float sums
    # happen (reduce-scatter of two partial gradients, the clipping norm summed shard by shard). 14 rows
    # in micro-batches of 2 make windows of 4 and 3 micro-batches, so the short window (rank 1 pads with a
    # zero-weight micro-batch) and the 1-batch validation split (rank 1 runs an uncounted forward) are
    # both exercised. Measured: losses agree to 7e-8 relative, so 1e-6 leaves room for other BLAS builds.
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() == set(range(1, 6))
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-6 * abs(l1[s]), (s, l1[s], l2[s])
    # The same criterion and reasoning as the hand-rolled 2-process test (Adam amplifies rounding in
    # near-zero gradient entries, so compare whole tensors): each adapter tensor within 0.1% in
    # Frobenius norm. Measured: 1.7e-5 after 5 steps.
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        rel = ((a[k] - b[k]).norm() / a[k].norm()).item()
        assert rel < 1e-3, (k, rel)
    assert json.loads((two / "training_args.json").read_text())["fsdp"] is True

    # Rank 0 wrote whole tensors in the format of a run without FSDP: same files, keys, shapes, dtypes and
    # optimizer param_groups (which carry the learning rate of the step).
    ck1, ck2 = one / "checkpoints" / "step-000004", two / "checkpoints" / "step-000004"
    for name in ("adapter.safetensors", "optimizer.safetensors"):
        t1, t2 = load_file(str(ck1 / name)), load_file(str(ck2 / name))
        assert t1.keys() == t2.keys(), name
        assert all(t1[k].shape == t2[k].shape and t1[k].dtype == t2[k].dtype for k in t1), name
    m1, m2 = (json.loads((ck / "checkpoint.json").read_text())["optimizer"] for ck in (ck1, ck2))
    assert m1 == m2

    # The exported adapter loads with plain peft and gives the 1-process run's logits.
    from peft import PeftModel
    from train.pretrained import load_text_model
    ids = torch.tensor([[1, 1500, 1600, 1700, 1800, 2]])
    with torch.no_grad():
        logits = [PeftModel.from_pretrained(load_text_model(tiny_text_model_dir, dtype=torch.float32), str(run))
                  .eval()(input_ids=ids).logits for run in (one, two)]
    assert torch.allclose(logits[0], logits[1], atol=1e-4), (logits[0] - logits[1]).abs().max()

    # Resume under --fsdp: interrupted after step 3, resumed from the step-2 checkpoint (whole tensors
    # scattered back into the shards) -> bitwise the uninterrupted --fsdp run.
    resumed = tmp_path / "resumed"
    torchrun(args(tiny_text_model_dir, small_dapt, resumed, 2, "--fsdp", "--stop-after-steps", "3"), tmp_path)
    torchrun(args(tiny_text_model_dir, small_dapt, resumed, 2, "--fsdp", "--resume"), tmp_path)
    assert "resumed from" in (resumed / "train.log").read_text()
    c = load_file(str(resumed / "adapter_model.safetensors"))
    for k in b:
        assert torch.equal(b[k], c[k]), k


def test_fsdp_needs_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["--phase", "dapt", "--fsdp", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--fsdp needs torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--phase", "dapt", "--compile"], "--compile with --fsdp"),
    (["--phase", "sft", "--share-prefix"], "--share-prefix with --fsdp"),
])
def test_fsdp_rejects_what_it_cannot_run(extra, message, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; validate_args runs before any process group
    with pytest.raises(ConfigError, match=message):
        validate_args(parse_args([*extra, "--fsdp", "--device", "cpu"]), cuda_available=False)


def test_fsdp_turns_the_shared_prefix_default_off(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = parse_args(["--phase", "sft", "--fsdp", "--device", "cpu"])
    assert cfg.share_prefix is False
    validate_args(cfg, cuda_available=False)  # the SFT defaults with --fsdp are a valid configuration
    assert parse_args(["--phase", "sft"]).share_prefix is True  # unchanged without --fsdp


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fsdp_on_two_gpus(tiny_text_model_dir, small_dapt, tmp_path):  # noqa: F811
    """NCCL, bf16, one process per GPU (--device auto puts each on cuda:LOCAL_RANK): it trains, the norms are finite."""
    import os
    import subprocess

    from test_distributed import ROOT, TORCHRUN
    argv = [a for a in args(tiny_text_model_dir, small_dapt, tmp_path / "gpu", 2, "--fsdp")]
    argv[argv.index("--device") + 1] = "auto"
    argv[argv.index("--precision") + 1] = "bf16"
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "train/main.py"), *argv],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(x) for x in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 5 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)
    assert json.loads((tmp_path / "gpu" / "training_args.json").read_text())["resolved"]["device"] == "cuda:0"


def metrics(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"}


@pytest.mark.slow
def test_fsdp_gradient_norm_and_clipping_with_checkpointing_match_one_process(tiny_text_model_dir, small_dapt,  # noqa: F811
                                                                               tmp_path):
    """Issue 28, items 1 and 12: clip_grad_norm_ over FSDP2's sharded DTensor gradients logs the global norm (not a
    rank's shard), clipping at 0.001 then moves the weights as one process does, and FSDP runs with gradient
    checkpointing (which the memory plan may switch on by itself)."""
    extra = ("--gradient-checkpointing", "--grad-clip", "0.001", "--max-steps", "3", "--save-interval", "100")
    one, two = tmp_path / "one", tmp_path / "fsdp"
    assert main(args(tiny_text_model_dir, small_dapt, one, 4, *extra)) == 0
    torchrun(args(tiny_text_model_dir, small_dapt, two, 2, "--fsdp", *extra), tmp_path)
    m1, m2 = metrics(one), metrics(two)
    assert m1.keys() == m2.keys() == {1, 2, 3}
    for s in m1:
        assert m1[s]["grad_norm"] > 0.01   # far above the clip: clipping engaged at every step
        for key in ("loss", "grad_norm"):
            assert abs(m1[s][key] - m2[s][key]) <= 1e-5 * abs(m1[s][key]), (s, key, m1[s][key], m2[s][key])
    assert json.loads((two / "training_args.json").read_text())["gradient_checkpointing"] is True


INJECT = """
import os, sys, torch
import train.main as loop
from safetensors.torch import save_file
rank, out = int(os.environ["RANK"]), sys.argv[sys.argv.index("--output-dir") + 1]
real_loss, calls = loop.labels_only_loss_sum, [0]

def poisoned(lm, batch, chunk):
    loss = real_loss(lm, batch, chunk)
    if torch.is_grad_enabled():
        calls[0] += 1
        if rank == 1 and calls[0] == 3:   # the first micro-batch of step 2 on rank 1: an inf gradient, a finite loss
            loss.register_hook(lambda g: g * float("inf"))
    return loss

real_finish = loop.finish
def finish(run):
    real_finish(run)
    whole = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in run.params.items()}
    save_file(whole, os.path.join(out, f"rank{rank}.safetensors"))

loop.labels_only_loss_sum, loop.finish = poisoned, finish
sys.exit(loop.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_inf_gradient_on_one_rank_skips_the_step_on_every_rank(tiny_text_model_dir, small_dapt, tmp_path):  # noqa: F811
    """Issue 28, items 1 and 4: the inf reaches every rank's norm through the reduction, so all skip the same step
    (no hang, no rank updating alone): the result is one process skipping that step; the forensics bundle holds
    both ranks' micro-batches and the device."""
    import subprocess

    from safetensors.torch import load_file

    from test_distributed import ROOT, TORCHRUN, cpu_env
    extra = ("--max-steps", "3", "--save-interval", "100")
    one, two = tmp_path / "one", tmp_path / "fsdp"
    assert main(args(tiny_text_model_dir, small_dapt, one, 4, "--debug-nan-steps", "2", *extra)) == 0
    script = tmp_path / "inject.py"
    script.write_text(INJECT)
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script),
                           *args(tiny_text_model_dir, small_dapt, two, 2, "--fsdp", *extra)],
                          capture_output=True, text=True, env=cpu_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m1, m2 = metrics(one), metrics(two)
    assert [m2[s]["skipped_steps"] for s in (1, 2, 3)] == [0, 1, 1] == [m1[s]["skipped_steps"] for s in (1, 2, 3)]
    assert not math.isfinite(m2[2]["grad_norm"]) and math.isfinite(m2[3]["grad_norm"])
    for s in (1, 3):
        assert abs(m1[s]["loss"] - m2[s]["loss"]) <= 1e-5 * abs(m1[s]["loss"]), (s, m1[s]["loss"], m2[s]["loss"])
    r0, r1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)   # no divergence between ranks
    a = load_file(str(one / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter_model.safetensors"))
    assert all(((a[k] - b[k]).norm() / a[k].norm()).item() < 1e-3 for k in a)
    bundle = two / "forensics" / "step-000002"
    assert {p.name for p in bundle.glob("batches-rank*.safetensors")} == {"batches-rank0.safetensors",
                                                                         "batches-rank1.safetensors"}
    assert json.loads((bundle / "bundle.json").read_text())["device"] == "cpu"
