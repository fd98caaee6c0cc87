"""SFT phase with the seed's flags, exports, post-training checks and the one-command flow (reduced)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train.main import main

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = str(ROOT / "templates/mistral3_chat_template_assistant_mask.jinja")


@pytest.fixture(scope="module")
def processed(tiny_model_dir, tmp_path_factory) -> Path:
    from data.build import main as data_main
    out = tmp_path_factory.mktemp("processed")
    assert data_main(["--raw-dir", str(ROOT / "data/raw"), "--out-dir", str(out), "--model-path", str(tiny_model_dir),
                      "--sft-max", "80"]) == 0
    return out


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, processed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    # The seed playbook's SFT flags, verbatim, plus small shapes for CPU.
    rc = main(["--phase", "sft", "--model-path", str(tiny_model_dir), "--sft-dir", str(processed / "sft"),
               "--output-dir", str(out), "--precision", "fp32", "--assistant-only-loss",
               "--strict-assistant-only-loss", "--chat-template-path", TEMPLATE, "--no-packing", "--use-lora",
               "--max-length", "1024", "--micro-batch-size", "4", "--grad-accum", "1", "--lr", "3e-3",
               "--max-steps", "4", "--eval-max-batches", "2", "--device", "cpu"])
    assert rc == 0
    return out


def test_sft_run_records_assistant_only_loss(sft_run):
    args = json.loads((sft_run / "training_args.json").read_text())
    assert args["assistant_only_loss"] is True and args["strict_assistant_only_loss"] is True
    assert args["packing"] is False and args["phase"] == "sft"
    assert args["chat_template_sha256"] and args["data_stats"]["train"]["n_kept"] > 0
    assert "{% generation %}" in (sft_run / "chat_template.jinja").read_text().replace("{%- generation %}", "{% generation %}")
    assert (sft_run / "vlm_adapter" / "adapter_model.safetensors").is_file()


def test_vlm_adapter_applies_to_the_released_layout(sft_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import Mistral3ForConditionalGeneration

    from train.pretrained import load_text_model
    vlm = PeftModel.from_pretrained(Mistral3ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                    str(sft_run / "vlm_adapter")).eval()
    text = PeftModel.from_pretrained(load_text_model(tiny_model_dir, dtype=torch.float32), str(sft_run)).eval()
    ids = torch.tensor([[1, 17, 1300, 18, 3, 1500, 4, 34, 1600]])
    with torch.no_grad():
        assert torch.allclose(vlm(input_ids=ids).logits, text(input_ids=ids).logits, atol=1e-5)
    targeted = [n for n, m in vlm.named_modules() if hasattr(m, "lora_A")]
    assert targeted and not any("vision_tower" in n for n in targeted)


def test_sft_refuses_data_without_the_contract_system_prompt(tiny_model_dir, processed, tmp_path, capsys):
    bad = tmp_path / "sft"
    bad.mkdir()
    for split in ("train", "validation"):
        rows = [json.loads(x) for x in (processed / "sft" / f"{split}.jsonl").read_text().splitlines()]
        rows[0]["messages"][0]["content"] = "You are a helpful assistant."
        (bad / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc = main(["--phase", "sft", "--model-path", str(tiny_model_dir), "--sft-dir", str(bad), "--output-dir",
               str(tmp_path / "o"), "--precision", "fp32", "--max-steps", "1", "--device", "cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "prompt contract" in err and "system_prompt_mismatch" in err


def test_post_training_checks_report(sft_run, processed, capsys):
    from train.tools.post_checks import main as check_main
    # 4 steps cannot teach the format: the contract check must fail, and say why, with a non-zero exit.
    assert check_main(["--run-dir", str(sft_run), "--limit", "4", "--max-new-tokens", "16", "--device", "cpu"]) == 1
    report = json.loads((sft_run / "post_training_report.json").read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    for name in ("artifacts_present", "assistant_only_loss_on", "run_finished_with_finite_metrics",
                 "template_has_generation_blocks", "adapter_loads_with_peft", "prompt_contract_in_rendered_prompts"):
        assert by_name[name]["passed"], name
    gen = by_name["generations_pass_reasoning_contract"]
    n_validation = len((processed / "sft" / "validation.jsonl").read_text().splitlines())
    detail = gen["detail"]
    assert not gen["passed"] and detail["total"] == min(4, n_validation) and detail["failure_codes"]
    assert detail["broke_contract"] + detail["cut_by_budget"] == detail["total"] - detail["passed"]
    assert detail["max_new_tokens"] == 16
    assert report["passed"] is False and 0 <= report["contract_pass_rate"] < 0.9
    # Decoded as served (the folder's generation_config.json), with greedy beside it; a model without a
    # stand_in.json is held to the real checkpoint's bar.
    assert detail["decoding"] == {"sampling": {"temperature": 0.7, "top_p": 0.95}, "seed": 0}
    assert detail["floor"] == {"value": 0.95, "source": "the bar for a real checkpoint"}
    assert detail["greedy"]["total"] == detail["total"] and report["greedy_contract_pass_rate"] < 0.9
    out = capsys.readouterr().out
    assert "FAILED" in out and f"< 0.95, the bar for a real checkpoint" in out and "greedy, for comparison" in out


def test_post_training_checks_flag_a_run_without_assistant_only_loss(sft_run, tmp_path):
    import shutil

    from train.tools.post_checks import main as check_main
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    args = json.loads((run / "training_args.json").read_text())
    args["assistant_only_loss"] = False
    (run / "training_args.json").write_text(json.dumps(args))
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace('"loss": ', '"loss": NaN, "x": ', 1))
    assert check_main(["--run-dir", str(run), "--limit", "2", "--max-new-tokens", "4", "--threshold", "0",
                       "--device", "cpu"]) == 1
    report = json.loads((run / "post_training_report.json").read_text())
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"assistant_only_loss_on", "run_finished_with_finite_metrics"} <= failed


def test_an_adapter_that_does_not_load_is_a_failed_check_not_a_traceback(sft_run, tmp_path, capsys):
    """Issue 28, item 12: adapter_loads_with_peft was recorded as passed whatever happened."""
    import shutil

    from train.tools.post_checks import main as check_main
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    weights = run / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert check_main(["--run-dir", str(run), "--limit", "2", "--max-new-tokens", "4", "--device", "cpu"]) == 1
    report = json.loads((run / "post_training_report.json").read_text())
    load = next(c for c in report["checks"] if c["name"] == "adapter_loads_with_peft")
    assert load["passed"] is False and load["detail"]["error"]
    assert report["passed"] is False and "[FAIL] adapter_loads_with_peft" in capsys.readouterr().out


@pytest.mark.slow
def test_flow_end_to_end_reduced(tmp_path, monkeypatch, stand_in_dir, capsys):
    import shutil

    from conftest import fast_stand_in
    from train.tools.flow import main as flow_main
    monkeypatch.chdir(ROOT)  # templates/ and data/raw are found relative to the project, as with ./run.sh
    models = tmp_path / "models"
    shutil.copytree(stand_in_dir, models / "tiny-ministral3")   # the cached stand-in, as a second ./run.sh finds it
    # A nearly untrained stand-in never stops by itself: its own generation budget keeps the checks short.
    config = json.loads((stand_in_dir / "generation_config.json").read_text()) | {"max_new_tokens": 8}
    (models / "tiny-ministral3" / "generation_config.json").write_text(json.dumps(config))
    # The stamp's file hashes follow the edit, or the flow would take the folder for damaged and rebuild it.
    from train.tools.tiny_model import STAMP, file_hashes
    stamp = json.loads((models / "tiny-ministral3" / STAMP).read_text())
    stamp["files"] = file_hashes(models / "tiny-ministral3")
    (models / "tiny-ministral3" / STAMP).write_text(json.dumps(stamp))
    # The flow has no --device: it takes --device auto's choice, which this CPU test pins to the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with fast_stand_in():
        rc = flow_main(["--model-path", str(tmp_path / "no-model-here"), "--models-dir", str(models),
                        "--data-dir", str(tmp_path / "processed"), "--sft-max", "60", "--dapt-steps", "2",
                        "--sft-steps", "2", "--check-limit", "2", "--check-threshold", "1", "--seed", "7",
                        "--stand-in-steps", "2", "--eval-per-kind", "1"])
    # An 8-token budget cuts every generation, so the contract check fails: the flow still evaluates the three
    # models and prints them side by side, then exits 1 with the verdict.
    assert rc == 1
    out = capsys.readouterr().out
    assert "STAND-IN model" in out and "is up to date" in out and "held-out C64 document loss" in out
    assert "post-training checks FAILED (the flow exits 1)" in out
    sft = models / "fine-tuned-sft"
    report = json.loads((sft / "post_training_report.json").read_text())
    assert not report["passed"] and report["contract_pass_rate"] == 0
    args = json.loads((sft / "training_args.json").read_text())
    assert args["lineage"]["base_adapter"].endswith("fine-tuned-dapt")
    dapt_args = json.loads((models / "fine-tuned-dapt" / "training_args.json").read_text())
    assert args["seed"] == dapt_args["seed"] == 7  # --seed reaches both phases
    summary = json.loads((sft / "flow_summary.json").read_text())
    assert summary["tiny"] is True and summary["checks_passed"] is False and set(summary["stage_seconds"]) == {
        "stand-in", "data", "dapt", "sft", "check", "eval base", "eval DAPT", "eval SFT"}
    assert set(summary["evaluation"]) == {"base", "DAPT", "SFT"}
    for name, path in (("base", models / "eval_report_base.json"), ("DAPT", models / "fine-tuned-dapt" / "eval_report.json"),
                       ("SFT", sft / "eval_report.json")):
        ev = json.loads(path.read_text())
        assert ev["contract"]["max_new_tokens"] == 8 and ev["held_out_facts"]["total"] == 7
        assert (ev["adapter"] is None) == (name == "base")
    assert (tmp_path / "processed" / "validation_report.json").is_file()
    # The run pages are rebuilt after the checks and evaluations, so they show them; one page overlays both phases.
    for page in ((sft / "report.html").read_text(), (models / "fine-tuned-dapt" / "report.html").read_text()):
        assert "no Evaluation in the folder yet" not in page and "held_out_facts" in page
    assert "no Post-training checks in the folder yet" not in (sft / "report.html").read_text()
    overview = (models / "report.html").read_text()
    assert "fine-tuned-sft" in overview and "fine-tuned-dapt" in overview
