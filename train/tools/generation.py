"""Loading a model for inference and generating from it: shared by the tools that generate (checks, eval, chat).

A model to generate from is a base folder plus, optionally, a run's adapter. An adapter trained on top of an
earlier one (SFT on DAPT) records that lineage in its training_args.json; the earlier adapter is merged into
the base first, exactly as the run trained.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from contract.tokens import EOS_ID, PAD_ID
from train.pretrained import load_text_model


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


def greedy_generations(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                       device: torch.device) -> list[list[int]]:
    """Greedy continuations, left-padded batches; each result is cut after its first </s>."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        for row in gen[:, width:].tolist():
            out.append(row[:row.index(EOS_ID) + 1] if EOS_ID in row else row)
    return out
