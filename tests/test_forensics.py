"""Issue 7: a forensics bundle replays its micro-batches and names the module where a NaN was planted."""
from __future__ import annotations

import torch

from train import checkpointing, forensics
from train.batching import Row, collate
from train.config import TrainConfig
from train.lora_model import build_model, trainable_parameters


def test_replay_names_the_module_with_the_planted_nan(tiny_text_model_dir, tmp_path):
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    model = build_model(cfg, torch.device("cpu"), lambda _: None)
    params = trainable_parameters(model)
    target = "base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight"
    with torch.no_grad():
        params[target][3, 5] = float("nan")
    batch = collate([Row("r0", list(range(1000, 1040)), list(range(1000, 1040)))])
    bundle = forensics.save_bundle(tmp_path / "forensics", 7, [batch], checkpointing.capture_rng(), params, cfg, ["r0"])
    result = forensics.replay(bundle)
    assert result["step"] == 7 and result["first_non_finite"] == "module"
    assert result["module"] == "base_model.model.model.layers.1.mlp.up_proj.lora_A.default"


def test_replay_of_a_clean_bundle_says_so(tiny_text_model_dir, tmp_path):
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    params = trainable_parameters(build_model(cfg, torch.device("cpu"), lambda _: None))
    batch = collate([Row("r0", list(range(1000, 1020)), list(range(1000, 1020)))])
    bundle = forensics.save_bundle(tmp_path / "f", 1, [batch], checkpointing.capture_rng(), params, cfg, ["r0"])
    result = forensics.replay(bundle)
    assert result["first_non_finite"] is None and "finite" in result["note"]


def test_a_bundle_holds_every_process_batches_and_replays_on_the_recorded_device(tiny_text_model_dir, tmp_path):
    """Issue 28, item 4: each process writes its own micro-batches; the replay runs all of them, on the device the
    step ran on unless told otherwise."""
    import json
    import pytest
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32").resolve()
    params = trainable_parameters(build_model(cfg, torch.device("cpu"), lambda _: None))
    mine = [collate([Row(f"r{rank}", list(range(1000 + rank, 1020)), list(range(1000 + rank, 1020)))])
            for rank in range(2)]
    filler = mine[0] | {"filler": True}   # an FSDP process's padding micro-batch is not data
    root = tmp_path / "f"
    forensics.save_bundle(root, 3, [mine[1], filler], {}, None, cfg, ["r0", "r1"], rank=1, world_size=2, device="cpu")
    bundle = forensics.save_bundle(root, 3, [mine[0]], checkpointing.capture_rng(), params, cfg, ["r0", "r1"],
                                   rank=0, world_size=2, device="cpu")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["device"] == "cpu" and meta["world_size"] == 2
    batches = forensics.bundle_batches(bundle, 2)
    assert [(rank, int(b["attention_mask"].sum())) for rank, b in batches] == [(0, 20), (1, 19)]
    result = forensics.replay(bundle)
    assert result["micro_batches"] == 2 and result["device"] == "cpu" and result["first_non_finite"] is None
    (bundle / "batches-rank1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="batches-rank1.safetensors: missing"):
        forensics.replay(bundle)
