"""Rows, epoch plans and micro-batches.

A *row* is one training sequence: a packed DAPT block or one SFT conversation. An *epoch plan* is the
list of micro-batches (lists of row indices) for one epoch; it is a pure function of (seed, epoch), so
resuming only needs the epoch number and the position in the plan, and every process derives the same
plan without talking to the others.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from contract.errors import UserError
from contract.tokens import BOS_ID, EOS_ID, IGNORE_INDEX, PAD_ID

# Below this many shared tokens a second forward call costs more in launch overhead than it saves.
SHARED_PREFIX_MIN_TOKENS = 16


@dataclass
class Row:
    row_id: str
    input_ids: list[int]
    labels: list[int]


class DataError(UserError):
    """A data file is missing or malformed; the message names the file and line."""


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The JSON objects of a JSONL file (the first `limit` of them); a bad line fails with file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run `./run.sh data` first, or point --dapt-dir/--sft-dir at your data)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def pack_documents(docs: list[dict], tokenizer, max_length: int) -> tuple[list[Row], dict]:
    """DAPT: <s> doc </s> <s> doc </s> ... cut into max_length blocks; every token is a label.

    Documents are concatenated across block edges (standard causal packing) so no token is thrown away;
    the last, shorter block is kept and padded at collate time.
    """
    texts = [d["text"] for d in docs]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    stream: list[int] = []
    for ids in encoded:
        stream.extend([BOS_ID, *ids, EOS_ID])
    rows = [Row(f"block-{i // max_length:06d}", stream[i:i + max_length], stream[i:i + max_length])
            for i in range(0, len(stream), max_length)]
    stats = {"documents": len(docs), "tokens": len(stream), "blocks": len(rows),
             "last_block_tokens": len(rows[-1].input_ids) if rows else 0}
    return rows, stats


def epoch_plan(lengths: list[int], micro_batch_size: int, seed: int, epoch: int,
               group_by_length: bool) -> list[list[int]]:
    """Micro-batches of row indices for one epoch, deterministic in (seed, epoch).

    With group_by_length, shuffled rows are sorted by length inside windows of 64 micro-batches and the
    resulting micro-batches are shuffled again: similar lengths share a batch (little padding) while the
    order of batches stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = micro_batch_size * 64
        grouped = []
        for start in range(0, len(order), window):
            grouped.extend(sorted(order[start:start + window], key=lambda i: -lengths[i]))
        order = grouped
    batches = [order[i:i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def shared_prefix_length(rows: list[Row]) -> int:
    """Leading tokens that every row of a micro-batch has in common and that predict no label.

    In SFT every conversation starts with the same <s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT] (hundreds of
    tokens), so the loss can run that prefix once and let all rows attend to its keys and values
    (train/loss.py). The prefix stops before the last position whose hidden state would predict a label.
    """
    if len(rows) < 2:
        return 0
    first, n = rows[0].input_ids, min(len(r.input_ids) for r in rows)
    common = 0
    while common < n and all(r.input_ids[common] == first[common] for r in rows[1:]):
        common += 1
    # Position j predicts token j+1, so the hidden states of positions >= first_label-1 are needed.
    first_label = min(next((i for i, x in enumerate(r.labels) if x != IGNORE_INDEX), len(r.labels)) for r in rows)
    prefix = min(common, first_label - 1)
    return prefix if prefix >= SHARED_PREFIX_MIN_TOKENS else 0


def collate(rows: list[Row], pad_id: int = PAD_ID, share_prefix: bool = False) -> dict:
    """Right-padded tensors plus what the loss and the throughput counters need, computed on the host.

    `label_positions` / `targets` are the flat indices of positions that predict a label and the labels
    they predict, into batch x (seq - 1 - shared_prefix): the positions the loss's trunk output covers.
    Computing them here keeps boolean indexing (a device->host sync) out of the training step.
    `n_trunk_tokens` is what the transformer layers actually process (MFU counts those).
    """
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        attention_mask[i, :n] = 1
    prefix = shared_prefix_length(rows) if share_prefix else 0
    shifted = labels[:, 1 + prefix:]
    label_positions = (shifted != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)
    n_tokens = int(attention_mask.sum())
    return {
        "input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "shared_prefix": prefix,
        "label_positions": label_positions, "targets": shifted.reshape(-1)[label_positions],
        "n_label_tokens": int(label_positions.numel()), "n_tokens": n_tokens,
        "n_trunk_tokens": n_tokens - (len(rows) - 1) * prefix,
        "n_padded_tokens": int(input_ids.numel()), "row_ids": [r.row_id for r in rows],
    }


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`. To a GPU they go from page-locked memory, without which a non-blocking
    copy is a blocking one in disguise; on a CPU they stay where they are."""
    if device.type != "cuda":
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    return {k: (v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
