"""Issue 19: the held-out split of reference-table facts, the C64 question set, the scorer and the eval report."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data import held_out as H
from data.reference_tables import load_tables

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tables() -> dict:
    return load_tables(ROOT / "data/raw/reference")[0]


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """The default data build (stand-in system prompt, no tokenizer: the fastest build of the full SFT set)."""
    from data.build import main as data_main
    out = tmp_path_factory.mktemp("processed")
    assert data_main(["--raw-dir", str(ROOT / "data/raw"), "--out-dir", str(out)]) == 0
    return out


def conversation_text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


# --- scorer ------------------------------------------------------------------------------------------

def test_values_are_normalised_across_bases():
    assert H.values_in("$D020 = 53280 = 0xd020 = %1101000000100000") == [53280] * 4
    # Digits inside a name and decimal fractions are not values; a sentence's full stop ends a number.
    assert H.values_in("C#4 and G4 at 261.626 Hz; error 27. $0326-$0327 (806-807)") == [27, 806, 807, 806, 807]


@pytest.mark.parametrize("answer, right", [
    ("CHROUT is at $FFD2.", True),
    ("65490", True),
    ("JSR $ffd2 (65490) calls CHROUT: output a character.", True),
    ("0xFFD2", True),
    ("CHROUT is at $FFCF.", False),                     # a wrong value
    ("$FFCF, or maybe $FFD2", False),                  # the first value counts, not any value
    ("CHROUT.", False),                                 # no value at all
    (None, False),                                      # no final answer ([/THINK] never came)
])
def test_scorer_exact_match_after_normalisation(answer, right):
    item = H.Item("kernal_api", "address_of", "kernal:$FFD2", "Which address do I JSR to for CHROUT?", "CHROUT", 0xFFD2)
    assert item.correct(answer) is right


def test_scorer_skips_values_the_question_gave():
    item = H.Item("sid_note_frequencies", "note_to_value", "sid:G4", "NTSC machine, voice 3: which two bytes play G4?",
                  "G4", 6430)
    assert item.correct("Voice 3: 6430 ($191E): $1E to $D40E.")
    assert not item.correct("Voice 3: 6431.")


# --- held-out rule and question set ------------------------------------------------------------------

def test_held_out_rule_is_a_stable_tenth_of_the_rows(tables):
    groups = [f"opcodes:{op['opcode']}" for op in tables["opcodes"]["opcodes"]]
    held = [g for g in groups if H.is_held_out(g)]
    assert held == [g for g in groups if H.is_held_out(g)]      # a pure function of the key
    assert 0.05 < len(held) / len(groups) < 0.15


def test_question_set_asks_held_out_rows_with_table_answers(tables):
    items = H.question_set(tables)
    kinds = {(i.table, i.kind) for i in items}
    assert kinds == set(H.KINDS) and len(items) >= 40
    for it in items:
        assert H.is_held_out(it.group), it
        assert it.expected not in H.values_in(it.question), it   # a question never states its answer
        if it.reference is not None:
            # The SFT generator's own answer to the same question scores as right: the scorer reads SFT-style answers.
            assert it.correct(it.reference), it
    # The expected values are the tables' own, looked up independently of the generators.
    kernal: dict[str, set] = {}
    for e in tables["kernal_api"]["entries"]:
        for n in e.get("names") or []:
            kernal.setdefault(n, set()).add(e["value"])
    tokens = {t["keyword"]: {t["value"]} for t in tables["basic_tokens"]["tokens"]}
    opcodes = {op["syntax"]: {op["value"]} for op in tables["opcodes"]["opcodes"] if op["documented"]}
    for it in items:
        lookup = {"address_of": kernal, "keyword_token": tokens, "opcode_byte": opcodes}.get(it.kind)
        if lookup is not None:
            assert it.expected in lookup[it.subject], it


def test_no_evaluated_fact_appears_in_sft_training_data(processed, tables):
    rows = [json.loads(x) for x in (processed / "sft" / "train.jsonl").read_text().splitlines()]
    assert len(rows) > 1500
    facts = H.held_out_facts(tables)
    assert {f.group for f in facts} >= {i.group for i in H.question_set(tables)}
    assert not [r["id"] for r in rows if H.is_held_out(r["group"].removeprefix("gen:"))]
    leaked = [(r["id"], f.subject) for r in rows for f in facts if f.stated_in(conversation_text(r))]
    assert not leaked, leaked[:5]
    report = json.loads((processed / "validation_report.json").read_text())["sft"]["held_out_for_eval"]
    assert report["facts"] == len(facts) and report["generated_examples_skipped"]["states_held_out_fact"] > 0


def test_without_the_filter_held_out_facts_would_leak(tables):
    # The check above can fail: the unfiltered generator does state held-out facts.
    from data.sft_generate import generate
    facts = H.held_out_facts(tables)
    examples = generate(tables, 600, 0)
    assert any(H.leaks(f"{e.question}\n{e.reasoning}\n{e.answer}", facts) for e in examples)


# --- judging generations -----------------------------------------------------------------------------

def test_a_cut_generation_is_told_apart_from_a_broken_one(tiny_tokenizer):
    from train.tools.generation import BROKE_CONTRACT, CUT_BY_BUDGET, PASSED, judge_generation
    word, other = (tiny_tokenizer.encode(w, add_special_tokens=False) for w in (" value", " answer"))
    passed = judge_generation([34, *word, 35, *other, 2], tiny_tokenizer, 16)
    assert passed.status == PASSED and passed.answer.strip() == "answer"
    cut = judge_generation([34] + word * 7, tiny_tokenizer, 1 + 7 * len(word))
    assert cut.status == CUT_BY_BUDGET and cut.answer is None
    # Cut, but the contract was already broken before the cut: no [THINK] first, or a control token answered.
    assert judge_generation(word * 8, tiny_tokenizer, 8 * len(word)).status == BROKE_CONTRACT
    broke = judge_generation([34, *word, 35, 3, *word], tiny_tokenizer, 3 + 2 * len(word))
    assert broke.status == BROKE_CONTRACT and "control_token_in_answer" in broke.codes
    # Finished within the budget without closing [THINK]: broken, not cut.
    assert judge_generation([34, *word, 2], tiny_tokenizer, 100).status == BROKE_CONTRACT


def test_generation_budget_comes_from_the_model(tiny_model_dir, tmp_path):
    import shutil

    from train.tools.generation import REASONING_BUDGET, generation_budget
    assert generation_budget(tiny_model_dir) == 1024          # the stand-in's generation_config.json
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "generation_config.json").unlink()
    assert generation_budget(bare) == REASONING_BUDGET


# --- the report --------------------------------------------------------------------------------------

def test_think_length_counts_the_think_part(tiny_tokenizer):
    from train.tools.generation import think_summary, think_tokens
    word = tiny_tokenizer.encode(" value", add_special_tokens=False)
    assert think_tokens([34, *word * 3, 35, *word, 2]) == 3 * len(word)
    assert think_tokens([34, *word * 5]) == 5 * len(word)               # cut before [/THINK]: what was written
    assert think_tokens([34, *word * 2, 2]) == 2 * len(word)             # ended without [/THINK]: </s> not counted
    assert think_tokens([*word, 35, 2]) is None                          # no [THINK] opened
    summary = think_summary([[34, *[7] * n, 35, 2] for n in range(1, 22)] + [[7, 2]])
    assert summary == {"median": 11, "p95": 20, "measured": 21, "total": 22}
    assert think_summary([[7, 2]])["median"] is None


EVAL_FAST = ["--per-kind", "1", "--max-new-tokens", "6", "--max-length", "128", "--device", "cpu", "--batch-size", "32"]


def test_eval_report_and_summary(tiny_model_dir, processed, tmp_path, capsys):
    from train.tools.evaluate import main as eval_main
    out = tmp_path / "eval_report.json"
    assert eval_main(["--model-path", str(tiny_model_dir), "--sft-dir", str(processed / "sft"), "--dapt-dir",
                      str(processed / "dapt"), "--out", str(out)] + EVAL_FAST) == 0
    report = json.loads(out.read_text())
    held, trained = report["items"]["held_out"], report["items"]["trained"]
    assert len(held) == len(H.KINDS) == report["held_out_facts"]["total"]
    assert report["trained_facts"]["total"] == len(trained) > 0
    assert not {r["group"] for r in held} & {r["group"] for r in trained}
    # Sampled as the model is served (the stand-in's generation_config.json), seeded; greedy is the second figure.
    assert report["decoding"] == {"sampled": {"temperature": 0.7, "top_p": 0.95, "seed": 0}, "greedy_too": True}
    for figures, answer in ((report, lambda r: r), (report["greedy"], lambda r: r["greedy"])):
        c = figures["contract"]
        assert c["total"] == len(held) + len(trained) and c["max_new_tokens"] == 6
        assert c["passed"] + c["broke_contract"] + c["cut_by_budget"] == c["total"]
        assert figures["cut_share"] == c["cut_by_budget"] / c["total"]
        assert figures["think_tokens"]["total"] == c["total"]
        assert figures["held_out_facts"]["total"] == len(held)
        assert figures["trained_facts"]["correct"] == sum(answer(r)["correct"] for r in trained)
        assert all(answer(r)["correct"] == (answer(r)["answer"] is not None and
                                            H.answer_value(answer(r)["answer"], r["question"]) == r["expected"])
                   for r in held + trained)
    # The held-out documents are scored one by one (the data build holds out several), and over all.
    doc = report["document_loss"]
    assert doc["documents"] == len(doc["per_document"]) >= 3 and doc["tokens"] > 0 and 5 < doc["loss"] < 12
    assert doc["tokens"] == sum(d["tokens"] for d in doc["per_document"]) and all(d["tokens"] for d in doc["per_document"])
    text = capsys.readouterr().out
    for line in ("held-out C64 facts", "held-out C64 document loss", "think length", "greedy:",
                 "sampled (temperature 0.7, top-p 0.95, seed 0)", str(out)):
        assert line in text, line

    # The same seed gives the same sampled answers; --no-greedy leaves the second figure out; a token cap per
    # document shortens the document loss.
    again = tmp_path / "again.json"
    assert eval_main(["--model-path", str(tiny_model_dir), "--sft-dir", str(processed / "sft"), "--dapt-dir",
                      str(processed / "dapt"), "--out", str(again), "--no-greedy", "--doc-max-tokens", "128"]
                     + EVAL_FAST) == 0
    second = json.loads(again.read_text())
    def sampled(rep):
        return [(r["answer"], r["generated_tokens"]) for r in rep["items"]["held_out"] + rep["items"]["trained"]]
    assert sampled(second) == sampled(report) and second["greedy"] is None and "greedy" not in second["items"]["held_out"][0]
    assert all(d["tokens"] <= 128 for d in second["document_loss"]["per_document"])


def test_eval_refuses_a_missing_adapter(tiny_model_dir, tmp_path, capsys):
    from train.tools.evaluate import main as eval_main
    assert eval_main(["--model-path", str(tiny_model_dir), "--adapter", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- the flow's side-by-side table -------------------------------------------------------------------

def fake_report(held: int, trained: int, passed: int, cut: int, think: tuple, losses: dict, greedy: bool = True) -> dict:
    def facts(n):
        return {"correct": n, "total": 28, "accuracy": n / 28, "by_kind": {}}

    def figures(passed, cut, think):
        return {"held_out_facts": facts(held), "trained_facts": facts(trained), "cut_share": cut / 56,
                "contract": {"passed": passed, "total": 56, "rate": passed / 56, "cut_by_budget": cut},
                "think_tokens": {"median": think[0], "p95": think[1], "measured": 56, "total": 56}}
    tokens = 100
    per_doc = [{"id": k, "tokens": tokens, "loss": v} for k, v in losses.items()]
    return figures(passed, cut, think) | {
        "decoding": {"sampled": {"temperature": 0.7, "top_p": 0.95, "seed": 0}, "greedy_too": greedy},
        "greedy": figures(passed - 10, cut + 5, (think[0] * 2, think[1] * 2)) if greedy else None,
        "document_loss": {"loss": sum(losses.values()) / len(losses), "documents": len(losses), "per_document": per_doc}}


def test_flow_table_shows_what_each_stage_changed():
    from train.tools.flow import comparison
    reports = {"base": fake_report(0, 0, 50, 2, (40, 300), {"a": 6.0, "b": 5.0, "c": 4.0}),
               "DAPT": fake_report(0, 1, 52, 1, (38, 290), {"a": 5.0, "b": 4.5, "c": 4.5}),
               "SFT": fake_report(1, 9, 55, 0, (30, 80), {"a": 5.5, "b": 5.5, "c": 3.0}, greedy=False)}
    table = comparison(reports).splitlines()
    rows = {line[:40].strip(): line[40:].split() for line in table[1:]}
    assert table[0].split() == ["base", "DAPT", "SFT"]
    assert "trained C64 facts, sampled" in rows and rows["trained C64 facts, sampled"][-2:] == ["9/28", "(32%)"]
    assert rows["think tokens, median / p95, sampled"] == ["40", "/", "300", "38", "/", "290", "30", "/", "80"]
    assert rows["cut by the token budget, sampled"][:2] == ["2/56", "(4%)"]
    assert rows["held-out C64 document loss (3 docs)"] == ["5.000", "4.667", "4.667"]
    assert rows["documents below the base's loss"] == ["-", "2/3", "2/3"]
    # The greedy figure sits under each sampled one; a stage evaluated without greedy shows a dash.
    greedy = [line for line in table if line.startswith("  greedy")]
    assert len(greedy) == 5 and all(line.split()[-1] == "-" for line in greedy)
    assert table[-1].startswith("sampled: temperature 0.7, top-p 0.95, seed 0")
    assert max(map(len, table[:-1])) <= 100
