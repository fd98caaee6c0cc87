"""The bench fixture (train/tools/bench_fixture.py) is what `./run.sh bench-trl` trains on: the loop's masking must
label it, the same seed must give the same files, and TRL's baseline (train/tools/trl_baseline.py) must label
exactly the tokens the loop labels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.tokens import IGNORE_INDEX
from train.tools import bench, bench_fixture

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"


@pytest.fixture(scope="module")
def small_fixture(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fx") / "small"
    return out, bench_fixture.build(out, size="small", seed=0)


def test_the_bench_labels_the_fixture_through_its_own_template(small_fixture):
    from transformers import PreTrainedTokenizerFast
    out, manifest = small_fixture
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out / "model"))
    rows = bench.fixture_rows(out, tokenizer, max_length=512)
    assert len(rows) == manifest["conversations"] == bench_fixture.SIZES["small"]["conversations"]
    supervised = 0
    for row in rows:
        assert len(row.input_ids) == len(row.labels) <= 512
        kept = [t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE_INDEX]
        assert kept, row.example_id
        supervised += len(kept)
        # Only assistant turns are labelled: each labelled span is [THINK]...[/THINK]answer</s>.
        text = tokenizer.decode(kept)
        assert text.startswith("[THINK]") and text.endswith("</s>") and "[INST]" not in text, text[:200]
    assert supervised == manifest["tokens"]["supervised_tokens"] > 0
    # TRL reads the template from the model folder; it must be the training one, with the generation blocks.
    assert (out / "model" / "chat_template.jinja").read_text() == (out / "chat_template.jinja").read_text()
    assert "{%- generation %}" in (out / "chat_template.jinja").read_text()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["Ministral3ForCausalLM"]
    assert config["hidden_size"] == bench_fixture.SMALL_TEXT["hidden_size"]


def test_the_same_seed_gives_the_same_files_and_a_built_folder_is_not_overwritten(small_fixture, tmp_path):
    out, manifest = small_fixture
    again = bench_fixture.build(tmp_path / "again", size="small", seed=0)
    assert again["files_sha256"] == manifest["files_sha256"]
    assert bench_fixture.main(["--out", str(out), "--size", "small"]) == 2


def test_the_bench_preset_is_the_fixture_shape():
    assert bench.PRESETS["cpu"]["shapes"] == bench_fixture.SIZES["bench"]["text"]
    assert bench_fixture.SIZES["bench"]["text"]["hidden_size"] == 512


@pytest.mark.slow
@pytest.mark.skipif(not TRL_PYTHON.is_file(),
                    reason=".venv-trl/ not built: `./run.sh bench-trl` builds it (TRL stays out of the project's venv)")
def test_trl_labels_and_feeds_the_same_tokens_as_the_loop(small_fixture, tmp_path):
    """One epoch of the small fixture on both sides (2 optimizer steps of 2 x 16 rows)."""
    out, manifest = small_fixture
    report = tmp_path / "bench.json"
    assert bench.main(["--preset", "cpu", "--fixture", str(out), "--trl-python", str(TRL_PYTHON),
                       "--trl-script", str(ROOT / "train" / "tools" / "trl_baseline.py"), "--precision", "fp32",
                       "--steps", "2", "--device", "cpu", "--out", str(report)]) == 0
    run = json.loads(report.read_text())["runs"][0]
    ours, trl = run["ours"], run["trl"]
    assert trl["optimizer_steps"] == ours["optimizer_steps"] == 2 and len(trl["losses"]) == 2
    assert trl["tokens"] == ours["tokens"] == manifest["tokens"]["tokens"]
    assert trl["assistant_tokens"] == ours["supervised_tokens"] == manifest["tokens"]["supervised_tokens"]
    assert trl["tokens_per_s"] > 0 and trl["peak_rss_MiB"] > 0 and run["comparison"]["trained_tokens_per_s_ratio"] > 0
