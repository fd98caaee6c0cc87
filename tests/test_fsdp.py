"""--fsdp: FSDP2 (fully_shard) under torchrun, 2 CPU processes on gloo, against 1 process with the same global batch."""
from __future__ import annotations

import json

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
