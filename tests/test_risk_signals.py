"""Issue 20: the playbook's risk signals at training time (loss divergence, an empty validation split) and
--report-to tensorboard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_report import write_sft_split
from test_training_loop import dapt_args, dapt_dir, metrics  # noqa: F401  (dapt_dir is a fixture used here)
from train import checkpointing
from train.divergence import MIN_HISTORY, WINDOW, DivergenceWatch
from train.main import main


def test_a_spike_far_above_the_running_level_is_signalled_with_its_step():
    watch = DivergenceWatch(spike_factor=3.0, eval_rises=3)
    losses = [2.0, 1.9, 1.8, 1.7, 1.6]
    assert [watch.step_loss(s, v) for s, v in enumerate(losses, 1)] == [None] * 5
    assert watch.step_loss(6, 2.9) is None                # noisy, but under 3x the median (1.8)
    assert watch.step_loss(7, float("nan")) is None       # the NaN guard's business, not a level
    message = watch.step_loss(8, 9.0)
    assert message.startswith("step 8: loss 9.0000 is 4.9x its running level 1.8500 (median of the last 6 steps")
    # The median holds the level: the spike itself does not hide a second one right after it.
    assert watch.step_loss(9, 9.5) is not None


def test_no_spike_verdict_before_enough_history_nor_for_a_small_jump_at_a_low_level():
    early = DivergenceWatch(3.0, 3)
    assert all(early.step_loss(s, v) is None for s, v in enumerate([2.0] * (MIN_HISTORY - 1) + [50.0], 1))
    low = DivergenceWatch(3.0, 3)
    for s in range(1, WINDOW + 1):
        low.step_loss(s, 0.05)
    assert low.step_loss(WINDOW + 1, 0.4) is None         # 8x, but 0.35 nats: one unusual batch
    assert low.step_loss(WINDOW + 2, 0.9) is not None


def test_validation_loss_rising_several_evaluations_in_a_row():
    watch = DivergenceWatch(3.0, eval_rises=3)
    verdicts = [watch.eval_loss(s, v) for s, v in ((0, 3.0), (50, 2.5), (100, 2.6), (150, 2.7), (200, 2.65),
                                                   (250, 2.7), (300, 2.8), (350, 2.9))]
    assert verdicts[:7] == [None] * 7  # two rises, a fall, then two rises again
    assert verdicts[7] == "step 350: validation loss 2.9000 has risen 3 evaluations in a row"
    assert DivergenceWatch(3.0, eval_rises=0).eval_loss(1, 1.0) is None


def test_injected_spike_is_warned_and_aborts_with_a_checkpoint(tiny_text_model_dir, dapt_dir, tmp_path):  # noqa: F811
    out = tmp_path / "abort"
    rc = main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "9", "--save-interval", "100",
                        "--debug-spike-steps", "7", "--abort-on-divergence", "--device", "cpu"))
    assert rc == 1
    log = (out / "train.log").read_text()
    assert "WARN divergence: step 7: loss" in log and "x its running level" in log
    assert "ERROR --abort-on-divergence: step 7: loss" in log
    ck = checkpointing.latest_valid_checkpoint(out / "checkpoints", print)
    assert ck["step"] == 7 and ck["loop_state"]["step"] == 7
    assert [r["step"] for r in metrics(out)] == list(range(1, 8))
    assert not (out / "adapter_model.safetensors").exists() and (out / "report.html").is_file()


def test_without_the_abort_flag_a_spike_is_only_warned(tiny_text_model_dir, dapt_dir, tmp_path):  # noqa: F811
    out = tmp_path / "warn"
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "7", "--debug-spike-steps", "6",
                          "--device", "cpu")) == 0
    log = (out / "train.log").read_text()
    assert log.count("WARN divergence:") == 1 and "step 6: loss" in log
    assert (out / "adapter_model.safetensors").is_file()


def test_an_empty_sft_validation_split_stops_before_training(tiny_model_dir, tmp_path, capsys):
    data = write_sft_split(tmp_path / "sft", tiny_model_dir, 4, 0)
    out = tmp_path / "out"
    rc = main(["--phase", "sft", "--model-path", str(tiny_model_dir), "--sft-dir", str(data), "--output-dir", str(out),
               "--precision", "fp32", "--max-length", "512", "--device", "cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{data / 'validation.jsonl'}: no validation rows" in err and "--allow-empty-validation" in err
    assert "Traceback" not in err
    log = (out / "train.log").read_text()
    assert "trainable parameters" not in log and not (out / "checkpoints").exists()  # no model was even loaded


def test_an_accepted_empty_validation_split_is_warned_and_recorded(tiny_text_model_dir, dapt_dir,  # noqa: F811
                                                                  tmp_path):
    data = tmp_path / "dapt"
    data.mkdir()
    (data / "train.jsonl").write_text((dapt_dir / "train.jsonl").read_text())
    (data / "validation.jsonl").write_text("")
    out = tmp_path / "out"
    assert main(dapt_args(tiny_text_model_dir, data, out, "--max-steps", "2", "--allow-empty-validation",
                          "--device", "cpu")) == 0
    log = (out / "train.log").read_text()
    assert f"WARN {data / 'validation.jsonl'}: no validation rows: training without a validation loss" in log
    assert "nan" not in log and metrics(out, "eval") == []
    args = json.loads((out / "training_args.json").read_text())
    assert args["allow_empty_validation"] is True and args["data_stats"]["validation"]["empty_accepted"] is True


def test_report_to_tensorboard_logs_the_metrics(tiny_text_model_dir, dapt_dir, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "tb"
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "2", "--report-to", "tensorboard",
                          "--device", "cpu")) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in metrics(out)}, rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/mfu", "eval/eval_loss"} <= set(events.Tags()["scalars"])


def test_report_to_tensorboard_without_the_package_is_refused(monkeypatch, tmp_path, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["--phase", "dapt", "--output-dir", str(tmp_path), "--report-to", "tensorboard"]) == 2
    assert "--report-to tensorboard needs the tensorboard package" in capsys.readouterr().err
