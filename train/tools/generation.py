"""Loading a model for inference and generating from it: shared by the tools that generate (checks, eval, chat).

A model to generate from is a base folder plus, optionally, a run's adapter. An adapter trained on top of an
earlier one (SFT on DAPT) records that lineage in its training_args.json; the earlier adapter is merged into
the base first, exactly as the run trained.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from contract.reasoning import MISSING_THINK_OPEN, NESTED_THINK, CONTROL_TOKEN_IN_ANSWER, validate_token_ids
from contract.tokens import EOS_ID, NUM_CONTROL_SLOTS, PAD_ID, THINK_CLOSE_ID, THINK_OPEN_ID
from train.pretrained import load_text_model

# Without a max_new_tokens of the model's own (generation_config.json), a reasoning model gets this many new
# tokens: a real [THINK] trace of the 8B model on a hard question runs to thousands of tokens, and a budget
# that cuts it would be read as a broken contract.
REASONING_BUDGET = 16384
PASSED, BROKE_CONTRACT, CUT_BY_BUDGET = "passed", "broke_contract", "cut_by_budget"
# Decoding as the model is served (docs/model.md, "Decoding"): the Ministral 3 Reasoning card recommends temperature
# 0.7 with the official system prompt, and greedy decoding, which reasoning-model cards warn against, loops. Top-p
# 0.95 is the sibling Magistral card's. A model folder's generation_config.json overrides both when it sets them.
RECOMMENDED_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
# generation_config.json fields that make up a sampling recipe; everything else (lengths, ids) is set by the caller.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def adapter_lineage(adapter_dir: str | Path) -> dict:
    """The run's training_args.json (model_path, base_adapter, precision, ...), or {} for a bare peft folder."""
    path = Path(adapter_dir) / "training_args.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_for_inference(model_path: str | Path, adapter_dir: str | Path | None, device: torch.device,
                       dtype: torch.dtype | None = None):
    """The text model of `model_path` with the adapter's lineage merged in and the adapter applied, in eval mode.

    bf16 on a GPU, fp32 on a CPU unless `dtype` says otherwise: CPU bf16 generation is slower and rounds more.
    """
    from peft import PeftModel

    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = load_text_model(model_path, dtype=dtype, device=device)
    if adapter_dir is not None:
        base_adapter = adapter_lineage(adapter_dir).get("base_adapter")
        if base_adapter:
            model = PeftModel.from_pretrained(model, base_adapter).merge_and_unload()
        model = PeftModel.from_pretrained(model, str(adapter_dir)).to(device)
    return model.eval()


def spread_sample(rows: list, limit: int) -> list:
    """`limit` rows spread evenly over the file, in file order (all of them when there are fewer).

    The data step writes each split grouped by source, so the first `limit` rows would test the first
    tables only; an even spread keeps every source in proportion, and stays deterministic.
    """
    if len(rows) <= limit:
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def sampling_settings(model_path: str | Path) -> dict:
    """model.generate's sampling arguments for this model: RECOMMENDED_SAMPLING, overridden field by field by the
    model folder's generation_config.json (a merged export or a run folder carries its base's)."""
    settings = dict(RECOMMENDED_SAMPLING)
    if (Path(model_path) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        own = GenerationConfig.from_pretrained(str(model_path)).to_diff_dict()
        settings |= {k: own[k] for k in SAMPLING_FIELDS if own.get(k) is not None}
    return {"do_sample": True} | settings


def generate_turns(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                       device: torch.device, sampling: dict | None = None, seed: int = 0) -> list[list[int]]:
    """Continuations in left-padded batches, greedy or, with `sampling` (sampling_settings()), sampled with a
    seed per batch so that a run repeats; each result is cut after its first </s>."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        decoding = {"do_sample": False}
        if sampling:
            decoding = dict(sampling)
            torch.manual_seed(seed + i)
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **decoding,
                                 max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        for row in gen[:, width:].tolist():
            out.append(row[:row.index(EOS_ID) + 1] if EOS_ID in row else row)
    return out


def generation_budget(model_path: str | Path) -> int:
    """max_new_tokens for greedy checks of this model: its generation_config.json's max_new_tokens when set,
    else REASONING_BUDGET (never more than the model's positions allow)."""
    path = Path(model_path) / "generation_config.json"
    own = json.loads(path.read_text()).get("max_new_tokens") if path.is_file() else None
    if own:
        return int(own)
    from train.pretrained import read_text_config
    return min(REASONING_BUDGET, read_text_config(model_path)[0].max_position_embeddings)


@dataclass(frozen=True)
class Judged:
    """One greedy generation against the reasoning contract: passed, broke the contract, or was cut by the
    budget before it could finish (a too-small budget is not a broken format)."""
    status: str
    codes: tuple[str, ...]
    answer: str | None      # the text after [/THINK] (up to </s>), None when [/THINK] never came


def judge_generation(ids: list[int], tokenizer, budget: int) -> Judged:
    ids = list(ids)
    verdict = validate_token_ids(ids, tokenizer)
    answer = None
    if THINK_CLOSE_ID in ids:
        after = ids[ids.index(THINK_CLOSE_ID) + 1:]
        answer = tokenizer.decode(after[:after.index(EOS_ID)] if EOS_ID in after else after, skip_special_tokens=False)
    if verdict.ok:
        return Judged(PASSED, (), answer)
    if EOS_ID not in ids and len(ids) >= budget:
        # Cut: only what is already wrong in the part written counts as a broken contract.
        early = []
        if ids[0] != THINK_OPEN_ID:
            early.append(MISSING_THINK_OPEN)
        reasoning = ids[1:ids.index(THINK_CLOSE_ID)] if THINK_CLOSE_ID in ids else ids[1:]
        if THINK_OPEN_ID in reasoning:
            early.append(NESTED_THINK)
        if THINK_CLOSE_ID in ids and any(i < NUM_CONTROL_SLOTS for i in ids[ids.index(THINK_CLOSE_ID) + 1:]):
            early.append(CONTROL_TOKEN_IN_ANSWER)
        if not early:
            return Judged(CUT_BY_BUDGET, (CUT_BY_BUDGET,), answer)
        return Judged(BROKE_CONTRACT, tuple(early), answer)
    return Judged(BROKE_CONTRACT, verdict.codes, answer)


def contract_summary(judged: list[Judged], budget: int) -> dict:
    """Counts for a report: the pass rate, broken contracts by failure code, and budget cuts apart."""
    status = Counter(j.status for j in judged)
    return {"rate": status[PASSED] / max(1, len(judged)), "passed": status[PASSED], "total": len(judged),
            "broke_contract": status[BROKE_CONTRACT], "cut_by_budget": status[CUT_BY_BUDGET],
            "failure_codes": dict(Counter(c for j in judged if j.status == BROKE_CONTRACT for c in j.codes)),
            "max_new_tokens": budget}


def think_tokens(ids: list[int]) -> int | None:
    """How many tokens the [THINK] part of a generation holds: from [THINK] to [/THINK], or to the end when
    [/THINK] never came (a cut trace, so a lower bound); None when the generation does not open with [THINK]."""
    if not ids or ids[0] != THINK_OPEN_ID:
        return None
    end = ids.index(THINK_CLOSE_ID) if THINK_CLOSE_ID in ids else len(ids) - (ids[-1] == EOS_ID)
    return end - 1


def think_summary(generations: list[list[int]]) -> dict:
    """Median and p95 think length over the generations that open with [THINK] (`measured` of them)."""
    import numpy as np

    lengths = [n for n in map(think_tokens, generations) if n is not None]
    if not lengths:
        return {"median": None, "p95": None, "measured": 0, "total": len(generations)}
    median, p95 = np.percentile(lengths, [50, 95], method="nearest")
    return {"median": int(median), "p95": int(p95), "measured": len(lengths), "total": len(generations)}


def prompt_ids(messages: list[dict], tokenizer, template: str, default_system: str) -> tuple[str, list[int]]:
    """A conversation up to (not including) its first assistant turn, rendered with the training template as
    the model sees it when it starts to answer, and its token ids."""
    from train.masking import render_with_spans

    first_assistant = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    text, _ = render_with_spans(messages[:first_assistant], template, default_system_message=default_system)
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]
