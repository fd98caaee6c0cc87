"""Issue 5: the real recipe (train.main) on the tiny checkpoint, on CPU, with small shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import lora_model
from train import checkpointing
from train.batching import Row, collate
from train.config import TrainConfig
from train.loss import labels_only_loss_sum
from train.main import main
from train.lora_model import build_model, causal_lm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dapt_dir(tmp_path_factory) -> Path:
    """A small fixed DAPT set cut from the shipped sample corpus (redistributable text)."""
    d = tmp_path_factory.mktemp("dapt")
    text = (ROOT / "data/raw/vice__format_disk_image_d64.txt").read_text(encoding="utf-8")
    docs = [text[i:i + 700] for i in range(0, 700 * 24, 700)]
    with (d / "train.jsonl").open("w") as f:
        for i, t in enumerate(docs[:20]):
            f.write(json.dumps({"id": f"doc-{i}", "source": "test", "text": t}) + "\n")
    with (d / "validation.jsonl").open("w") as f:
        for i, t in enumerate(docs[20:]):
            f.write(json.dumps({"id": f"val-{i}", "source": "test", "text": t}) + "\n")
    return d


def dapt_args(model_dir, data_dir, out, *extra) -> list[str]:
    return ["--phase", "dapt", "--model-path", str(model_dir), "--dapt-dir", str(data_dir), "--output-dir", str(out),
            "--max-length", "64", "--micro-batch-size", "2", "--grad-accum", "2", "--precision", "fp32",
            "--lr", "3e-3", "--warmup-ratio", "0.1", "--eval-interval", "100", "--save-interval", "2",
            "--seed", "7", "--device", "cpu", *extra]


def metrics(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def full_run(tiny_text_model_dir, dapt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "14")) == 0
    return out


def test_loss_goes_down_and_artifacts_exist(full_run):
    train = metrics(full_run)
    assert len(train) == 14
    first, last = sum(r["loss"] for r in train[:3]) / 3, sum(r["loss"] for r in train[-3:]) / 3
    assert last < first - 0.3, (first, last)
    evals = metrics(full_run, "eval")
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_args.json",
                 "metrics.jsonl", "train.log", "chat_template.jinja"):
        assert (full_run / name).is_file(), name
    args = json.loads((full_run / "training_args.json").read_text())
    assert args["finished"] and args["phase"] == "dapt" and args["assistant_only_loss"] is False
    assert set(args["data_files"]) == {"train.jsonl", "validation.jsonl"}
    assert args["versions"]["torch"] == torch.__version__
    # --attention auto as given, and what it resolved to on this CPU, both on record
    assert args["attention"] == "auto" and args["resolved"]["attention"] == "eager"
    assert "attention: auto: eager on CPU" in (full_run / "train.log").read_text()
    for r in train:
        assert {"loss", "lr", "grad_norm", "supervised_tokens", "tokens", "tokens_per_s", "skipped_steps",
                "peak_mem_MiB"} <= set(r)


def test_resume_after_interruption_is_bitwise_identical(full_run, tiny_text_model_dir, dapt_dir, tmp_path):
    out = tmp_path / "interrupted"
    # 20 rows -> 10 micro-batches -> 5 steps per epoch: stopping at step 3 is mid-epoch, resuming from the
    # step-2 checkpoint crosses two epoch boundaries before step 14.
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "14", "--stop-after-steps", "3")) == 0
    assert not (out / "adapter_model.safetensors").exists()
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "14", "--resume")) == 0
    a = load_file(str(full_run / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics.jsonl is appended to across the interruption; the last record per step is the one that counts.
    by_step = lambda run: {r["step"]: r["loss"] for r in metrics(run)}  # noqa: E731
    assert by_step(full_run) == by_step(out)


def test_corrupt_newest_checkpoint_falls_back(full_run, tmp_path):
    import shutil
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(full_run / "checkpoints", ckpts)
    newest = sorted(ckpts.glob("step-*"))[-1]
    data = (newest / "adapter.safetensors").read_bytes()
    (newest / "adapter.safetensors").write_bytes(data[: len(data) // 2])  # a truncated write
    warnings = []
    ck = checkpointing.latest_valid_checkpoint(ckpts, warnings.append)
    assert ck is not None and ck["path"] != newest and ck["step"] < int(newest.name.split("-")[1])
    assert len(warnings) == 1 and newest.name in warnings[0] and "sha256" in warnings[0]


def test_half_written_checkpoint_is_never_picked(full_run, tmp_path):
    import shutil
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(full_run / "checkpoints", ckpts)
    (ckpts / ".tmp-step-000099").mkdir()  # what a crash during save leaves behind
    broken = ckpts / "step-000098"
    broken.mkdir()  # a folder without a manifest
    warnings = []
    ck = checkpointing.latest_valid_checkpoint(ckpts, warnings.append)
    assert ck["step"] == 14 and "step-000098" in warnings[0]


def test_nan_step_is_skipped_and_counted(tiny_text_model_dir, dapt_dir, tmp_path):
    out = tmp_path / "nan"
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "4", "--debug-nan-steps", "2")) == 0
    train = metrics(out)
    assert [r["skipped_steps"] for r in train] == [0, 1, 1, 1]
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "adapter_model.safetensors")).values())
    log = (out / "train.log").read_text()
    assert "step 2: non-finite update skipped" in log and "rows block-" in log
    assert (out / "forensics" / "step-000002" / "batches-rank0.safetensors").is_file()


def test_consecutive_nan_steps_abort_with_checkpoint(tiny_text_model_dir, dapt_dir, tmp_path):
    out = tmp_path / "abort"
    rc = main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "10", "--save-interval", "100",
                        "--debug-nan-steps", "2,3,4,5", "--max-consecutive-skips", "3"))
    assert rc == 1
    assert "4 consecutive non-finite steps" in (out / "train.log").read_text()
    ck = checkpointing.load_checkpoint(out / "checkpoints" / "step-000005")
    assert ck["loop_state"]["skipped_steps"] == 4
    assert all(torch.isfinite(t).all() for t in ck["trainable"].values())
    assert not (out / "adapter_model.safetensors").exists()


def test_saved_adapter_reproduces_trained_logits(full_run, tiny_text_model_dir):
    from peft import PeftModel
    from train.pretrained import load_text_model
    base = load_text_model(tiny_text_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(full_run)).eval()
    # The same adapter applied by our own model builder from the final checkpoint's tensors:
    # sdpa as the plain transformers model uses; auto would pick eager on CPU, equal only to fp32 rounding.
    cfg = TrainConfig(phase="dapt", model_path=str(tiny_text_model_dir), precision="fp32", attention="sdpa").resolve()
    ours = build_model(cfg, torch.device("cpu"), lambda _: None).eval()
    ck = checkpointing.latest_valid_checkpoint(full_run / "checkpoints", print)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if p.requires_grad:
                p.copy_(ck["trainable"][n])
        ids = torch.tensor([[1, 1500, 1600, 1700, 1800, 2]])
        assert torch.allclose(reloaded(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-6)
        plain = load_text_model(tiny_text_model_dir, dtype=torch.float32)  # peft injected into `base` in place
        assert not torch.allclose(reloaded(input_ids=ids).logits, plain(ids).logits, atol=1e-3), "adapter had no effect"


def test_adapter_init_depends_on_the_seed_not_on_the_base_adapter(full_run, tiny_text_model_dir):
    """Merging a base adapter (SFT on top of DAPT) draws from the global RNG; the fresh adapter must not
    start from another random draw because of it, or the same --seed would train a different run."""
    def lora_a(seed: int, base_adapter: str | None) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(phase="sft", model_path=str(tiny_text_model_dir), precision="fp32", seed=seed,
                          base_adapter=base_adapter).resolve()
        model = build_model(cfg, torch.device("cpu"), lambda _: None)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    alone, on_dapt, other_seed = lora_a(5, None), lora_a(5, str(full_run)), lora_a(6, None)
    assert alone.keys() == on_dapt.keys() and alone
    assert all(torch.equal(alone[n], on_dapt[n]) for n in alone)
    assert not any(torch.equal(alone[n], other_seed[n]) for n in alone)


def test_accumulation_is_token_weighted_over_the_window(tiny_text_model_dir):
    """k micro-batches with unequal supervised-token counts give the gradients of one batch of all rows."""
    model = lora_model(tiny_text_model_dir, phase="dapt")
    lm = causal_lm(model)
    g = torch.Generator().manual_seed(0)

    def row(i, n, supervised_from):
        ids = torch.randint(1000, 4000, (n,), generator=g).tolist()
        return Row(f"r{i}", ids, [-100] * supervised_from + ids[supervised_from:])

    rows = [row(0, 40, 30), row(1, 25, 2), row(2, 33, 20), row(3, 12, 1), row(4, 40, 39)]
    micro = [[rows[0], rows[1]], [rows[2]], [rows[3], rows[4]]]
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(batches):
        model.zero_grad(set_to_none=True)
        total = sum(collate(b)["n_label_tokens"] for b in batches)
        for b in batches:
            (labels_only_loss_sum(lm, collate(b), 8) / total).backward()
        return [p.grad.clone() for p in params]

    windowed, single = grads(micro), grads([rows])
    # Same math, different batching (padding, summation order): agreement to fp32 rounding, relative to
    # each tensor's largest gradient.
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(windowed, single))
    assert worst < 1e-5, worst
    # The mean of per-micro-batch means weighs tokens unequally: the test would catch that regression.
    model.zero_grad(set_to_none=True)
    for b in micro:
        c = collate(b)
        (labels_only_loss_sum(lm, c, 8) / c["n_label_tokens"] / len(micro)).backward()
    off = max(((p.grad - s).abs().max() / s.abs().max().clamp_min(1e-12)).item() for p, s in zip(params, single))
    assert off > 1e-2, off


@pytest.mark.parametrize("extra, message", [
    (["--phase", "sft", "--packing"], "packing"),
    (["--phase", "dapt", "--precision", "fp16", "--device", "cpu"], "fp16 on CPU"),
    (["--phase", "dapt", "--no-use-lora", "--merge"], "already writes the whole model"),
    (["--phase", "dapt", "--assistant-only-loss"], "DAPT trains on every token"),
    (["--phase", "dapt", "--profile-steps", "3"], "A:B"),
])
def test_bad_flag_combinations_are_rejected(extra, message, capsys, tmp_path):
    assert main(extra + ["--output-dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_assistant_only_loss_needs_generation_blocks(tmp_path, capsys):
    tpl = tmp_path / "plain.jinja"
    tpl.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert main(["--phase", "sft", "--chat-template-path", str(tpl), "--output-dir", str(tmp_path / "o")]) == 2
    assert "generation" in capsys.readouterr().err


def _window_run(model_dir, grad_clip: float):
    """A one-process Run of the tiny model (fp32, no dropout) and the micro-batches of one optimizer step."""
    from conftest import lora_model
    from train.batching import Row, collate
    from train.config import TrainConfig
    from train.distributed import DistInfo
    from train.run_log import RunLog
    from train.state import Run
    model = lora_model(model_dir, phase="dapt", seed=1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(phase="dapt", model_path=str(model_dir), precision="fp32", grad_clip=grad_clip).resolve()
    run = Run(cfg=cfg, info=DistInfo(), device=torch.device("cpu"), log=RunLog(None), model=model, params=params,
              optimizer=torch.optim.AdamW(params.values()))
    rows = [Row(f"r{i}", list(range(1000 + 37 * i, 1030 + 37 * i)), list(range(1000 + 37 * i, 1030 + 37 * i)))
            for i in range(4)]
    return run, [collate(rows[:2]), collate(rows[2:])]


def test_logged_gradient_norm_is_the_global_norm_of_the_window_gradients(tiny_text_model_dir):
    """Issue 28, item 2: the norm forward_backward returns (and the loop logs) against an oracle, get_total_norm
    over the gradients of an unwrapped copy of the model given the window's token-mean loss in one backward."""
    import copy

    from train.loss import full_logits_loss_sum
    from train.lora_model import causal_lm
    from train.main import forward_backward
    run, batches = _window_run(tiny_text_model_dir, grad_clip=0)
    oracle = copy.deepcopy(run.model)
    _, grad_norm, counts = forward_backward(run, batches)
    total = sum(full_logits_loss_sum(causal_lm(oracle), b) for b in batches)
    (total / counts["label"]).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in oracle.parameters() if p.requires_grad])
    assert grad_norm == pytest.approx(float(expected), rel=1e-5)


def test_a_tiny_grad_clip_hands_the_optimizer_gradients_of_exactly_that_norm(tiny_text_model_dir):
    """Adam's update does not show clipping (it is scale-invariant), so look at what the optimizer receives."""
    from train.main import forward_backward
    run, batches = _window_run(tiny_text_model_dir, grad_clip=1e-3)
    _, grad_norm, _ = forward_backward(run, batches)
    assert grad_norm > 0.1   # the norm logged is the one before clipping
    received = torch.nn.utils.get_total_norm([p.grad for p in run.params.values()])
    assert float(received) == pytest.approx(1e-3, rel=1e-4)
