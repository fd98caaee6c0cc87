"""./run.sh bench runs the loop's own step and reports consistent figures (at toy shapes, so it stays quick)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.tools import bench

TOY = dict(shapes=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       intermediate_size=128, vocab_size=4096),
           max_length=64, micro_batch=2, accum=2, steps=2)


@pytest.fixture
def toy_preset(monkeypatch):
    monkeypatch.setitem(bench.PRESETS, "cpu", TOY)


@pytest.mark.parametrize("stock", [False, True])
def test_cpu_bench_reports_the_loop_figures(toy_preset, tmp_path, stock):
    out = tmp_path / "b.json"
    argv = ["--preset", "cpu", "--precision", "fp32", "--device", "cpu", "--out", str(out)]
    assert bench.main(argv + (["--stock-dropout"] if stock else [])) == 0
    r = json.loads(out.read_text())["runs"][0]["ours"]
    assert r["optimizer_steps"] == 3 and len(r["losses"]) == 3   # 1 warm-up step + the 2 measured
    assert 0 < r["supervised_tokens"] < r["tokens"] <= r["padded_tokens"]
    assert 0 <= r["padding_share"] < 1
    assert r["trained_tokens_per_s"] > 0 and r["all_tokens_per_s"] > r["trained_tokens_per_s"]
    assert 0 < r["mfu"] < 1 and r["matmul_peak_flops"] > 0
    assert r["lora_dropout"] == ("nn.Dropout" if stock else "LaneMaskDropout")
    # the loop's own attention choice: eager on CPU at these shapes, with the reason on record
    assert r["attention"] == "eager" and r["attention_reason"].startswith("auto: eager on CPU")


def test_bench_refuses_trl_without_fixture(toy_preset, capsys):
    assert bench.main(["--preset", "cpu", "--trl-python", "python3"]) == 2
    assert "--trl-python needs --fixture" in capsys.readouterr().err


def test_repeat_summarises_every_run(toy_preset, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--preset", "cpu", "--precision", "fp32", "--device", "cpu", "--repeat", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rates = [r["ours"]["trained_tokens_per_s"] for r in report["runs"]]
    assert len(rates) == 2 and report["runs"][0]["ours"]["losses"] == report["runs"][1]["ours"]["losses"]
    s = report["summary"]["ours_trained_tokens_per_s"]
    assert s["min"] == min(rates) and s["max"] == max(rates) and s["min"] <= s["median"] <= s["max"]
    assert "over 2 runs (min / median / max)" in capsys.readouterr().out
    if Path("/proc/self/clear_refs").exists():  # Linux: each run's peak RSS counts from its own start
        assert all(r["ours"]["peak_memory_kind"].startswith("peak RSS of this run") for r in report["runs"])
    assert bench.main(["--preset", "cpu", "--repeat", "0"]) == 2


def test_figures_are_steady_state_and_the_model_is_built_in_its_dtype(toy_preset, tmp_path):
    """The warm-up step runs but is left out of tokens/s and MFU; the random model's weights are created in the
    run's dtype (an 8B model built in fp32 first needs 34 GB at once)."""
    import torch
    made = []
    real_init = torch.nn.Linear.reset_parameters
    # A context of its own: monkeypatch.undo() would also undo toy_preset and bench the full cpu preset.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Linear, "reset_parameters", lambda self: (made.append(self.weight.dtype), real_init(self)))
        model = bench.random_text_model(TOY["shapes"], torch.bfloat16, torch.device("cpu"))
    assert made and set(made) == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}

    out = tmp_path / "b.json"
    assert bench.main(["--preset", "cpu", "--precision", "fp32", "--device", "cpu", "--phase", "dapt",
                       "--out", str(out)]) == 0
    r = json.loads(out.read_text())["runs"][0]["ours"]
    assert r["warmup_steps"] == 1 and len(r["step_times_s"]) == r["optimizer_steps"] == TOY["steps"] + 1
    steady_s = sum(r["step_times_s"][1:])
    assert r["steady_wall_s"] == pytest.approx(steady_s, abs=2e-3)
    # DAPT blocks are all of one length: every step processes the same tokens, so the steady figure is exact.
    per_step = r["tokens"] / r["optimizer_steps"]
    assert r["all_tokens_per_s"] == pytest.approx(per_step * TOY["steps"] / steady_s, rel=1e-3)
    assert r["supervised_tokens"] == r["tokens"] - r["optimizer_steps"] * TOY["accum"] * TOY["micro_batch"]
    assert r["mfu_peak_source"] == "measured float32 matmul rate on cpu" and r["mfu"] == r["mfu_measured_peak"]
    assert r["memory_plan"]["predicted_peak_MiB"] == r["predicted_peak_MiB"]
