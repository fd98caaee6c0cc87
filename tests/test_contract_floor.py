"""Issue 27: the contract check decodes as the model is served, and its bar is a property of the base model:
0.95 for a real checkpoint, the calibrated floor a stand-in declares in its stand_in.json, or --threshold."""
from __future__ import annotations

import json

import pytest
import torch

from contract.errors import UserError
from train.config import TrainConfig
from train.tools.post_checks import REAL_CHECKPOINT_BAR, contract_floor, floor_line

# The CI pair of the calibration (docs/recipe.md, "Calibrating the contract floor"): 10 SFT steps on the shipped
# stand-in, good at the 8B recipe's learning rate and broken at 20x the tiny preset's, checked on fewer prompts
# than the flow uses. A short run at the preset's own rate is no good run: the stand-in first loses the
# contract and regains it only after a few hundred steps (docs/recipe.md).
STEPS, CHECK_LIMIT = 10, 32


def test_the_floor_comes_from_the_base_model_folder(tmp_path):
    assert contract_floor(tmp_path) == {"value": REAL_CHECKPOINT_BAR, "source": "the bar for a real checkpoint"}
    (tmp_path / "stand_in.json").write_text(json.dumps({"stand_in": True, "contract_floor": 0.8}))
    floor = contract_floor(tmp_path)
    assert floor["value"] == 0.8 and str(tmp_path / "stand_in.json") in floor["source"]
    assert contract_floor(tmp_path, threshold=0.5) == {"value": 0.5, "source": "--threshold"}
    (tmp_path / "stand_in.json").write_text(json.dumps({"stand_in": True}))
    with pytest.raises(UserError, match="no contract_floor"):
        contract_floor(tmp_path)


def test_the_floor_line_names_rate_floor_source_and_the_real_bar(tmp_path):
    summary = {"rate": 59 / 64, "passed": 59, "total": 64}
    stand_in = {"value": 0.8, "source": f"the stand-in's floor ({tmp_path}/stand_in.json)"}
    assert floor_line(summary, stand_in) == (f"contract 92.2% (59/64) >= 0.80, the stand-in's floor "
                                             f"({tmp_path}/stand_in.json); a real checkpoint is held to 0.95")
    real = contract_floor(tmp_path)
    assert floor_line(summary, real) == "contract 92.2% (59/64) < 0.95, the bar for a real checkpoint"


def test_sampling_settings_follow_the_card_unless_the_folder_says_otherwise(tmp_path):
    from train.tools.generation import RECOMMENDED_SAMPLING, sampling_settings
    assert sampling_settings(tmp_path) == {"do_sample": True} | RECOMMENDED_SAMPLING
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_k": 20, "max_new_tokens": 9}))
    assert sampling_settings(tmp_path) == {"do_sample": True, "temperature": 0.3, "top_p": 0.95, "top_k": 20}


def test_sampled_generations_repeat_for_a_seed_and_differ_from_greedy(tiny_model_dir):
    from train.tools.generation import generate_turns, load_for_inference, sampling_settings
    model = load_for_inference(tiny_model_dir, None, torch.device("cpu"))
    prompts = [[1, 17, 1300 + i, 18, 3, 1500 + i, 4] for i in range(6)]
    # A random tiny model's next-token distribution is nearly flat: temperature 1 makes each draw differ.
    sampling = sampling_settings(tiny_model_dir) | {"temperature": 1.0, "top_p": 1.0}
    first = generate_turns(model, prompts, 12, 4, torch.device("cpu"), sampling=sampling, seed=3)
    assert first == generate_turns(model, prompts, 12, 4, torch.device("cpu"), sampling=sampling, seed=3)
    assert first != generate_turns(model, prompts, 12, 4, torch.device("cpu"), sampling=sampling, seed=4)
    greedy = generate_turns(model, prompts, 12, 4, torch.device("cpu"))
    assert greedy == generate_turns(model, prompts, 12, 4, torch.device("cpu")) and greedy != first


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped stand-in, copied as a first run copies it, and the processed data built on it."""
    from data.build import main as data_main
    from train.tools.tiny_model import main as tiny_main
    root = tmp_path_factory.mktemp("floor")
    model = root / "tiny-ministral3"
    assert tiny_main(["--out", str(model)]) == 0
    assert data_main(["--out-dir", str(root / "data"), "--model-path", str(model)]) == 0
    return model, root / "data"


def short_sft(model, data, out, steps: int, *extra: str) -> None:
    from train.main import main as train_main
    from train.tools.tiny_preset import phase_argv
    assert train_main(phase_argv("sft", model, data, out, True, "fp32", 42, steps) + ["--device", "cpu", *extra]) == 0


@pytest.mark.slow
def test_the_contract_check_passes_a_good_run_at_the_stand_ins_floor(shipped, tmp_path, capsys):
    from train.tools.post_checks import main as check_main
    model, data = shipped
    short_sft(model, data, tmp_path / "good", STEPS, "--lr", str(TrainConfig.lr))
    assert check_main(["--run-dir", str(tmp_path / "good"), "--limit", str(CHECK_LIMIT), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "good" / "post_training_report.json").read_text())
    assert report["passed"] and report["contract_floor"]["value"] < REAL_CHECKPOINT_BAR
    assert "the stand-in's floor" in report["contract_floor"]["source"]
    assert "a real checkpoint is held to 0.95" in capsys.readouterr().out


@pytest.mark.slow
def test_the_contract_check_fails_a_broken_pipeline(shipped, tmp_path):
    """SFT at 20x the preset's rate, one of the calibration's broken pipelines (docs/recipe.md)."""
    from train.tools.calibrate_floor import variant_setup
    from train.tools.post_checks import main as check_main
    model, data = shipped
    flags, _ = variant_setup("lr-20x", tmp_path)
    short_sft(model, data, tmp_path / "broken", STEPS, *flags)
    # A broken model rarely stops by itself: a shorter budget and fewer prompts keep the check quick, and fail it
    # all the same (the calibration's lr-20x run kept the contract on 0 of 64).
    assert check_main(["--run-dir", str(tmp_path / "broken"), "--limit", "8", "--max-new-tokens", "128",
                       "--device", "cpu"]) == 1
    report = json.loads((tmp_path / "broken" / "post_training_report.json").read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    assert not by_name["generations_pass_reasoning_contract"]["passed"]
    assert by_name["artifacts_present"]["passed"] and by_name["prompt_contract_in_rendered_prompts"]["passed"]


def test_calibration_variants_break_what_they_say(tmp_path, tiny_tokenizer):
    """The broken pipelines of the calibration: each differs from the preset in exactly the bug it names."""
    import train.masking as masking
    from train.config import DEFAULT_TEMPLATE_PATH, PROJECT_ROOT
    from train.tools.calibrate_floor import parse_seeds, shifted_labels, template_without_think_close, variant_setup
    assert parse_seeds("0-3,42") == [0, 1, 2, 3, 42]
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "[THINK]r[/THINK]a"}]
    good = masking.read_template(PROJECT_ROOT / DEFAULT_TEMPLATE_PATH)
    broken = masking.read_template(template_without_think_close(tmp_path / "t.jinja"))
    text, spans = masking.render_with_spans(conv, good)
    broken_text, broken_spans = masking.render_with_spans(conv, broken)
    assert broken_text == text                                  # the model sees the same tokens...
    assert [text[a:b] for a, b in spans] == ["[THINK]r[/THINK]a</s>"]
    assert [text[a:b] for a, b in broken_spans] == ["[THINK]r", "a</s>"]   # ...but never learns to close

    rows = [{"id": "x", "messages": conv}]
    (enc,), _ = masking.encode_dataset(rows, tiny_tokenizer, good, max_length=None, progress=False)
    # Strict mode refuses that template before training: the calibration trains it with strict mode off.
    with pytest.raises(masking.StrictMaskingError, match="instead of </s>"):
        masking.encode_dataset(rows, tiny_tokenizer, broken, max_length=None, progress=False)
    with shifted_labels():
        (moved,), _ = masking.encode_dataset(rows, tiny_tokenizer, good, max_length=None, progress=False)
    assert moved.input_ids == enc.input_ids and moved.labels == enc.labels[1:] + [masking.IGNORE_INDEX]
    assert masking.encode_dataset.__name__ == "encode_dataset"  # restored on exit

    assert variant_setup("lr-20x", tmp_path)[0] == ["--lr", "0.04"]
    assert "--no-assistant-only-loss" in variant_setup("no-assistant-only", tmp_path)[0]
