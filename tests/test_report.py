"""Issue 20: report.html, written by every run, rebuilt and overlaid by ./run.sh report, checked in a real browser."""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from contract.prompt import system_prompt_for
from contract.tokens import IGNORE_INDEX
from test_training_loop import dapt_args, dapt_dir  # noqa: F401  (dapt_dir is a fixture used here)
from train.main import main
from train.report import PREVIEW_FILE, masking_preview
from train.report import main as report_main

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def write_sft_split(folder: Path, model_dir: Path, n_train: int, n_val: int) -> Path:
    """Small SFT splits that pass the prompt and reasoning contracts (one question, one reasoned answer each)."""
    folder.mkdir(parents=True, exist_ok=True)
    system = system_prompt_for(model_dir)
    for split, n in (("train", n_train), ("validation", n_val)):
        with (folder / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                addr = 0xD020 + i
                messages = [{"role": "system", "content": system},
                            {"role": "user", "content": f"What is at ${addr:04X}?"},
                            {"role": "assistant", "content": f"[THINK]${addr:04X} is {addr} decimal, a VIC-II "
                             f"colour register.[/THINK]${addr:04X} ({addr}) is a VIC-II colour register."}]
                f.write(json.dumps({"id": f"{split}-{i}", "source": "test", "messages": messages}) + "\n")
    return folder


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    data = write_sft_split(tmp / "sft", tiny_model_dir, 12, 4)
    out = tmp / "sft-run"
    assert main(["--phase", "sft", "--model-path", str(tiny_model_dir), "--sft-dir", str(data), "--output-dir",
                 str(out), "--precision", "fp32", "--max-length", "512", "--micro-batch-size", "4", "--grad-accum",
                 "1", "--lr", "3e-3", "--max-steps", "4", "--eval-interval", "2", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def dapt_run(tiny_text_model_dir, dapt_dir, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("report-dapt")
    assert main(dapt_args(tiny_text_model_dir, dapt_dir, out, "--max-steps", "4", "--eval-interval", "2",
                          "--device", "cpu")) == 0
    return out


def latest(records: list[dict], kind: str) -> dict[int, dict]:
    """The record that counts for each step (a resume logs some steps twice)."""
    return {r["step"]: r for r in records if r["kind"] == kind}


def expected_points(run: Path) -> dict[str, int]:
    """How many points each curve must have, counted straight from metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train, evals = latest(records, "train"), latest(records, "eval")
    counts = {key: sum(math.isfinite(r[key]) for r in train.values())
              for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")}
    return counts | {"eval_loss": len(evals)}


class SeriesParser(HTMLParser):
    """(run, metric) -> number of x,y pairs in the series' polyline, from the DOM the browser built."""

    def __init__(self):
        super().__init__()
        self.series: dict[tuple[str, str], int] = {}
        self._current = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "g" and a.get("class") == "series":
            self._current = (a["data-run"], a["data-metric"])
        elif tag == "polyline" and self._current:
            self.series[self._current] = len(a["points"].split()) if a["points"] else 0
            self._current = None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium on PATH (./run.sh test installs the Debian package when it runs as root with apt-get)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; CI must run the browser test")
    pytest.skip(reason)


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, timeout=120, check=True)


def test_every_run_writes_its_report_with_the_masking_preview(sft_run, tiny_model_dir):
    page = (sft_run / "report.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page must not fetch anything"
    preview = json.loads((sft_run / PREVIEW_FILE).read_text())
    assert len(preview) == 3
    for ex in preview:
        sup = [s["text"] for s in ex["segments"] if s["supervised"]]
        ctx = [s["text"] for s in ex["segments"] if not s["supervised"]]
        # The contract: the system prompt and the question are context, the reasoned answer is the label.
        assert sup and all(t.startswith("[THINK]") and t.endswith("</s>") for t in sup), sup
        assert "[SYSTEM_PROMPT]" in ctx[0] and not any("[SYSTEM_PROMPT]" in t or "[INST]" in t for t in sup)
        assert f'<span class="sup">{html.escape(sup[0][:40])}' in page
    assert '<span class="sup">' in page and "Masking preview" in page


def test_masking_preview_marks_exactly_the_label_tokens(tiny_tokenizer):
    from train.batching import Row
    ids = tiny_tokenizer("<s>[INST]Hi[/INST]", add_special_tokens=False)["input_ids"]
    answer = [34, *tiny_tokenizer("ok", add_special_tokens=False)["input_ids"], 35, 1500, 2]
    row = Row("r", ids + answer, [IGNORE_INDEX] * len(ids) + answer)
    (ex,) = masking_preview([row], tiny_tokenizer)
    assert ex["n_tokens"] == len(ids) + len(answer) and ex["n_supervised"] == len(answer)
    assert [s["supervised"] for s in ex["segments"]] == [False, True]
    assert ex["segments"][1]["text"] == tiny_tokenizer.decode(answer, skip_special_tokens=False)


def test_report_overlays_runs_and_shows_results_in_a_real_browser(sft_run, dapt_run, tmp_path):
    from train.tools.post_checks import main as check_main
    # 4 steps cannot teach the reasoning format: the checks fail, and the page must show that verdict too.
    assert check_main(["--run-dir", str(sft_run), "--limit", "2", "--max-new-tokens", "8", "--device", "cpu"]) == 1
    assert (sft_run / "post_training_report.json").is_file()
    (sft_run / "eval_report.json").write_text(json.dumps({"benchmark": "c64-qa", "accuracy": 0.125}))

    # Rebuild through the command a user runs, overlaying the DAPT run on the SFT run's axes.
    out = tmp_path / "both.html"
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "report", str(sft_run), str(dapt_run), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, VENV=sys.prefix))
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = out.read_text(encoding="utf-8")
    for text in ("generations_pass_reasoning_contract", "<td>FAIL</td>", "c64-qa", "0.125",
                 "Data statistics", "supervised_tokens"):
        assert text in page, text

    dom = browse(out, "--dump-dom").stdout.decode()
    parser = SeriesParser()
    parser.feed(dom)
    for run, label in ((sft_run, f"sft · {sft_run.name}"), (dapt_run, f"dapt · {dapt_run.name}")):
        for metric, n in expected_points(run).items():
            assert n > 0 and parser.series[(label, metric)] == n, (run.name, metric, n)

    shot = tmp_path / "page.png"
    browse(out, f"--screenshot={shot}", "--window-size=1400,1800")
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int).reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.02, "the screenshot is (nearly) blank"
    # Both runs' curves drew: pixels in each run's line colour (#1f77b4 for the first, #d62728 for the second).
    for colour in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):
        assert (np.abs(pixels - colour).max(axis=1) < 40).sum() > 200, colour


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    assert f"{tmp_path / 'metrics.jsonl'}: not found" in capsys.readouterr().err


def test_report_keeps_the_last_record_of_a_step_and_leaves_out_non_finite_values(tmp_path):
    from train.report import write_report
    records = [{"kind": "eval", "step": 0, "eval_loss": 3.0}]
    records += [{"kind": "train", "step": s, "loss": v, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 10.0, "mfu": 0.1}
                for s, v in ((1, 3.0), (2, 2.5), (3, 2.2), (2, 2.5), (3, float("nan")), (4, 2.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parser = SeriesParser()
    parser.feed(write_report([tmp_path]).read_text())
    counts = {metric: n for (_, metric), n in parser.series.items()}
    assert counts["loss"] == 3 and counts["lr"] == 4 and counts["eval_loss"] == 1
    assert "1 non-finite value(s) not drawn" in (tmp_path / "report.html").read_text()

