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
    assert r["optimizer_steps"] == 2 and len(r["losses"]) == 2
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
