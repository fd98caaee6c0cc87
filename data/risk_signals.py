"""Risk signals of the validation report: each a named check with its threshold, value and verdict.

A failing signal makes `python -m data.build` exit non-zero unless --allow-risk is given.
"""
from __future__ import annotations

import re
from pathlib import Path

MIN_THINK_COVERAGE = 0.95
MIN_DISTINCT_REASONING = 0.5
# distinct-2 depends on the tokenization: sub-word tokens (digits are single tokens in Tekken) repeat far
# more often than words. Calibrated on the generated mix (0.30 in words, 0.07 with the tiny tokenizer)
# against single-template data (down to 0.03 in words, 0.01 in tiny-tokenizer tokens).
MIN_DISTINCT_2 = {"whitespace": 0.1, "model": 0.03}
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
_END_GENERATION = re.compile(r"\{%-?\s*endgeneration\s*-?%\}")


def _signal(name: str, value, threshold, comparison: str, passed: bool, message: str, **extra) -> dict:
    return {"name": name, **extra, "value": value, "threshold": threshold, "comparison": comparison,
            "verdict": "pass" if passed else "fail", "message": message}


def split_signals(phase: str, counts: dict[str, int]) -> list[dict]:
    out = []
    for split_name in ("train", "validation"):
        n = counts.get(split_name, 0)
        hint = ("add documents: a validation split needs at least two usable documents" if phase == "dapt" else
                "provide more SFT rows or reference tables: a validation split needs at least two groups")
        out.append(_signal(f"empty_{split_name}_split", n, 1, ">=", n >= 1,
                           f"{phase} {split_name}: {n} rows" + ("" if n >= 1 else f" - {hint}"), phase=phase))
    return out


def coverage_signal(value: float | None, turns: int) -> dict:
    ok = value is not None and value >= MIN_THINK_COVERAGE
    msg = (f"{value:.3f} of {turns} assistant turns satisfy the reasoning contract" if value is not None else
           "no assistant turns were read")
    return _signal("low_think_coverage", value, MIN_THINK_COVERAGE, ">=", ok, msg, phase="sft")


def diversity_signals(div: dict) -> list[dict]:
    share, d2 = div.get("distinct_reasoning_share"), div.get("distinct_2")
    min_d2 = MIN_DISTINCT_2.get(div.get("tokens"), MIN_DISTINCT_2["model"])
    return [
        _signal("low_think_diversity", share, MIN_DISTINCT_REASONING, ">=",
                share is not None and share >= MIN_DISTINCT_REASONING,
                "share of distinct reasoning texts (after case/whitespace normalisation)", phase="sft",
                measure="distinct_reasoning_share"),
        _signal("low_think_diversity", d2, min_d2, ">=", d2 is not None and d2 >= min_d2,
                f"distinct-2 over reasoning {div.get('tokens')} tokens of {div.get('distinct_2_sample')} "
                "reasoning texts", phase="sft", measure="distinct_2"),
    ]


def template_signal(path: Path) -> dict:
    if not path.is_file():
        return _signal("template_without_generation_blocks", 0, 1, ">=", False,
                       f"{path}: missing; SFT with --assistant-only-loss needs this training template", path=str(path))
    text = path.read_text(encoding="utf-8", errors="replace")
    opens, closes = len(_GENERATION_BLOCK.findall(text)), len(_END_GENERATION.findall(text))
    ok = opens >= 1 and opens == closes
    msg = (f"{opens} {{% generation %}} block(s)" if ok else
           f"{opens} {{% generation %}} and {closes} {{% endgeneration %}} tags: assistant-only loss would have "
           "no (or unbalanced) supervised spans")
    return _signal("template_without_generation_blocks", opens, 1, ">=", ok, msg, path=str(path))
