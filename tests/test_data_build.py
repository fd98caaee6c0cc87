"""End to end: `python -m data.build` on the shipped sample, on broken inputs, and its report."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from data.build import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "raw"
# A full C64 corpus folder (raw documents, with its reference/ tables beside it), when the machine has one.
FULL_CORPUS = Path(os.environ["C64_CORPUS_DIR"]) if os.environ.get("C64_CORPUS_DIR") else None
REPORT_KEYS = {"inputs", "settings", "dapt", "sft", "think", "rejected_counts", "rejected", "risk_signals",
               "passed", "timing"}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "mask.jinja"
    path.write_text("{%- for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                    "{% endgeneration %}{% endif %}{% endfor %}", encoding="utf-8")
    return path


def build(out: Path, template: Path, *extra: str) -> tuple[int, dict]:
    rc = main(["--out-dir", str(out), "--chat-template-path", str(template), *extra])
    report_path = out / "validation_report.json"
    return rc, json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory, template):
    before = tree_hash(SAMPLE)
    out = tmp_path_factory.mktemp("sample")
    rc, report = build(out, template, "--sft-max", "400")
    assert tree_hash(SAMPLE) == before, "raw inputs must never be modified"
    return rc, report, out


def test_sample_gives_both_splits_for_both_phases(sample):
    rc, report, out = sample
    assert rc == 0 and report["passed"]
    for phase in ("dapt", "sft"):
        for split in ("train", "validation"):
            rows = read_jsonl(out / phase / f"{split}.jsonl")
            assert rows and len(rows) == report[phase]["counts"][split]
    assert report["think"]["coverage"] == 1.0 and report["think"]["coverage_written"] == 1.0


def test_rows_have_the_documented_shape(sample):
    _, _, out = sample
    for row in read_jsonl(out / "dapt" / "train.jsonl"):
        assert set(row) == {"id", "source", "text"} and row["text"].strip()
    for row in read_jsonl(out / "sft" / "train.jsonl"):
        assert set(row) == {"id", "source", "group", "messages"}
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        content = row["messages"][2]["content"]
        assert content.startswith("[THINK]") and "[/THINK]" in content


def test_no_document_or_question_in_both_splits(sample):
    _, _, out = sample
    ids = {s: {r["id"] for r in read_jsonl(out / "dapt" / f"{s}.jsonl")} for s in ("train", "validation")}
    assert not ids["train"] & ids["validation"]
    texts = {s: {r["text"] for r in read_jsonl(out / "dapt" / f"{s}.jsonl")} for s in ("train", "validation")}
    assert not texts["train"] & texts["validation"]
    q = {s: {r["messages"][1]["content"] for r in read_jsonl(out / "sft" / f"{s}.jsonl")}
         for s in ("train", "validation")}
    assert not q["train"] & q["validation"]


def test_same_input_same_output(sample, tmp_path, template):
    _, _, out = sample
    rc, _ = build(tmp_path, template, "--sft-max", "400")
    assert rc == 0
    for rel in ("dapt/train.jsonl", "dapt/validation.jsonl", "sft/train.jsonl", "sft/validation.jsonl"):
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_report_fields(sample):
    _, report, _ = sample
    assert REPORT_KEYS <= set(report)
    assert set(report["dapt"]) >= {"counts", "by_source", "duplicates_removed", "token_lengths", "documents"}
    assert report["dapt"]["by_source"]["reference"]["train"] + report["dapt"]["by_source"]["reference"]["validation"] == 7
    assert set(report["sft"]) >= {"counts", "by_source", "token_lengths", "generated", "groups"}
    assert set(report["think"]["diversity"]) >= {"distinct_reasoning_share", "distinct_2", "tokens"}
    assert report["inputs"]["system_prompt_source"] in ("stand_in", "default_model")
    for sig in report["risk_signals"]:
        assert {"name", "threshold", "value", "verdict", "comparison", "message"} <= set(sig)
        assert sig["verdict"] in ("pass", "fail")
    names = {s["name"] for s in report["risk_signals"]}
    assert names == {"empty_train_split", "empty_validation_split", "low_think_coverage", "low_think_diversity",
                     "template_without_generation_blocks"}
    assert report["sft"]["token_lengths"]["assistant_turn"]["p95"] < 300
    assert report["timing"]["seconds"] > 0


def test_template_without_generation_blocks_fails_unless_allowed(tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    rc, report = build(tmp_path / "a", plain, "--sft-max", "60")
    assert rc == 1
    sig = next(s for s in report["risk_signals"] if s["name"] == "template_without_generation_blocks")
    assert sig["verdict"] == "fail" and sig["value"] == 0
    rc, report = build(tmp_path / "b", tmp_path / "missing.jinja", "--sft-max", "60", "--allow-risk")
    assert rc == 0 and not report["passed"]


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def doc(topic: str) -> str:
    return f"# {topic}\n\n" + " ".join(f"{topic} fact number {i} about the Commodore 64." for i in range(40)) + "\n"


def test_bad_inputs_are_reported_never_fatal(tmp_path, template, capsys):
    raw = tmp_path / "raw"
    write(raw / "good_a.txt", doc("sprites"))
    write(raw / "good_b.md", doc("raster interrupts"))
    write(raw / "nested" / "good_c.txt", doc("sid filters"))
    write(raw / "latin1.txt", "line one\nline two caf\xe9\n".encode("latin-1"))
    write(raw / "empty.txt", "")
    write(raw / "blob.txt", bytes(range(256)) * 8)
    write(raw / "broken.json", '{"text": "unterminated')
    write(raw / "shape.json", '{"rows": [1, 2]}')
    write(raw / "tiny.md", "hi")
    write(raw / "copy.txt", doc("sprites"))
    write(raw / "manual.pdf", b"%PDF-1.4")
    write(raw / "README.md", "about this folder")
    write(raw / "more.json", json.dumps([{"text": doc("cia timers")}, {"text": doc("kernal vectors")}]))
    write(raw / "rows.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                              '"content": "[THINK]r[/THINK]a"}]}\nnot json\n')
    before = tree_hash(raw)
    rc, report = build(tmp_path / "out", template, "--raw-dir", str(raw))
    assert tree_hash(raw) == before
    got = {(r["file"], r["line"], r["reason"]) for r in report["rejected"]}
    assert {("latin1.txt", 2, "not_utf8"), ("empty.txt", None, "empty_file"), ("blob.txt", None, "binary_file"),
            ("broken.json", 1, "bad_json"), ("shape.json", None, "unsupported_json_shape"),
            ("tiny.md", None, "too_short"), ("good_a.txt", None, "exact_duplicate"),
            ("manual.pdf", None, "unsupported_extension"), ("rows.jsonl", 2, "bad_json")} <= got
    assert {"file": "README.md", "why": "corpus documentation (README/NOTICES/LICENSE), not training text"} in \
        report["inputs"]["ignored_files"]
    assert report["rejected_counts"]["dapt"]["not_utf8"] == 1
    err = capsys.readouterr().err
    assert "latin1.txt:2: not_utf8" in err and "blob.txt: binary_file" in err
    # copy.txt (first in path order) is kept instead of good_a.txt; plus good_b, good_c and more.json's two
    assert report["dapt"]["documents_written"] == 5
    assert report["sft"]["user_rows"] == 1 and report["sft"]["counts"] == {"train": 1, "validation": 0}
    failed = [(s["name"], s.get("phase")) for s in report["risk_signals"] if s["verdict"] == "fail"]
    assert ("empty_validation_split", "sft") in failed and rc == 1


def test_directory_without_usable_documents(tmp_path, template, capsys):
    raw = tmp_path / "raw"
    write(raw / "empty.txt", "   \n")
    write(raw / "blob.md", b"\x00\x01\x02" * 100)
    rc, report = build(tmp_path / "out", template, "--raw-dir", str(raw))
    assert rc == 1
    assert report["dapt"]["counts"] == {"train": 0, "validation": 0}
    failed = {(s["name"], s.get("phase")) for s in report["risk_signals"] if s["verdict"] == "fail"}
    assert ("empty_train_split", "dapt") in failed and ("empty_validation_split", "sft") in failed
    err = capsys.readouterr().err
    assert "empty.txt: empty_file" in err and "RISK FAIL empty_validation_split [dapt]" in err


def test_corpus_too_small_for_a_validation_split(tmp_path, template, capsys):
    raw = tmp_path / "raw"
    write(raw / "only.txt", doc("the one document"))
    rc, report = build(tmp_path / "out", template, "--raw-dir", str(raw))
    assert rc == 1 and report["dapt"]["counts"] == {"train": 1, "validation": 0}
    sig = next(s for s in report["risk_signals"] if s["name"] == "empty_validation_split" and s["phase"] == "dapt")
    assert sig["verdict"] == "fail" and "at least two usable documents" in sig["message"]


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--raw-dir", "--out-dir", "--model-path", "--reference-dir", "--sft-input", "--sft-max",
                 "--validation-fraction", "--seed", "--max-length", "--allow-risk", "--chat-template-path"):
        assert flag in out


def test_missing_raw_dir_is_a_usage_error(tmp_path, capsys):
    assert main(["--raw-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_reference_dir_is_found_beside_or_inside_raw(tmp_path, template):
    shutil.copytree(SAMPLE / "reference", tmp_path / "corpus" / "reference")
    raw = tmp_path / "corpus" / "raw"
    write(raw / "a.txt", doc("alpha"))
    write(raw / "b.txt", doc("beta"))
    rc, report = build(tmp_path / "out1", template, "--raw-dir", str(raw), "--sft-max", "40")
    assert report["inputs"]["reference_dir"] == str(tmp_path / "corpus" / "reference")
    assert report["sft"]["generated"] == 40 and rc == 0
    inside = tmp_path / "inside"
    shutil.copytree(raw, inside)
    shutil.copytree(SAMPLE / "reference", inside / "reference")
    _, report = build(tmp_path / "out2", template, "--raw-dir", str(inside), "--sft-max", "40")
    assert report["inputs"]["reference_dir"] == str(inside / "reference")
    assert not [r for r in report["rejected"] if "reference" in r["file"]]
    _, report = build(tmp_path / "out3", template, "--raw-dir", str(raw), "--sft-max", "40",
                      "--reference-dir", str(tmp_path / "nowhere"))
    assert report == {} or report["inputs"]["reference_dir"] != str(tmp_path / "corpus" / "reference")


def test_model_tokens_and_too_long_rows(tmp_path, template, tiny_model_dir):
    from train.pretrained import load_tokenizer
    raw = tmp_path / "raw"
    write(raw / "a.txt", doc("alpha"))
    write(raw / "b.txt", doc("beta"))
    shutil.copytree(SAMPLE / "reference", raw / "reference")
    rc, report = build(tmp_path / "out", template, "--raw-dir", str(raw), "--model-path", str(tiny_model_dir),
                       "--sft-max", "60", "--max-length", "560", "--allow-risk")
    assert rc == 0 and report["inputs"]["tokens"] == "model"
    too_long = [r for r in report["rejected"] if r["reason"] == "too_long"]
    assert too_long and all("> --max-length 560" in r["detail"] for r in too_long)
    assert report["sft"]["token_lengths"]["conversation"]["train"]["max"] <= 560
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = (tiny_model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    rows = read_jsonl(tmp_path / "out" / "sft" / "train.jsonl")
    ids = tok.apply_chat_template(rows[0]["messages"], tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert len(ids) <= 560
    assert len(too_long) + sum(report["sft"]["counts"].values()) == 60


@pytest.mark.skipif(FULL_CORPUS is None, reason="no full corpus: set C64_CORPUS_DIR to a raw/ folder to run this")
def test_shared_corpus_with_sibling_reference(tmp_path, template):
    rc, report = build(tmp_path, template, "--raw-dir", str(FULL_CORPUS), "--sft-max", "300")
    assert rc == 0, [s for s in report["risk_signals"] if s["verdict"] == "fail"]
    assert report["inputs"]["reference_tables"] and report["dapt"]["documents_written"] > 200
    assert report["timing"]["seconds"] < 60
