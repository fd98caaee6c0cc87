"""Token-summed cross-entropy, computed without materialising batch x seq x vocab logits.

The loop divides these *sums* by the number of supervised tokens in the whole accumulation window (all
micro-batches, all processes), so every supervised token weighs the same whatever batch it landed in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from train.batching import IGNORE_INDEX


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def trunk_hidden_states(model, batch: dict) -> torch.Tensor:
    """Final-norm hidden states of positions shared_prefix .. seq-1 (all positions when it is 0).

    With a shared prefix the common tokens run once, as a batch of one, into a key/value cache; the cache
    is repeated for every row and the rows' remaining tokens attend to it. The repeat and the cache's
    concatenation are ordinary autograd ops, so gradients from every row flow back into the one prefix
    pass: the same loss and gradients as running each row whole, for (rows - 1) x prefix fewer tokens.
    """
    ids, mask, prefix = batch["input_ids"], batch["attention_mask"], batch.get("shared_prefix", 0)
    if prefix == 0:
        return model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:1, :prefix], cache=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    return model(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache, use_cache=True).last_hidden_state


def labels_only_loss_sum(causal_lm, batch: dict, chunk_size: int) -> torch.Tensor:
    """Sum of CE over supervised positions only, LM head run in chunks of `chunk_size` positions.

    Each chunk is checkpointed: its logits exist only while that chunk is computed (forward and again in
    backward), so peak memory is chunk_size x vocab in fp32 instead of batch x seq x vocab. For 2 x 2048
    positions and a 131072 vocabulary that is 0.5 GiB instead of 2 GiB of fp32 logits (plus their grads).
    """
    trunk = trunk_hidden_states(causal_lm.model, batch)
    hidden = trunk[:, :-1].reshape(-1, trunk.shape[-1])
    hidden = hidden.index_select(0, batch["label_positions"])
    targets = batch["targets"]
    weight = causal_lm.lm_head.weight
    n = batch["n_label_tokens"]  # a host int: the chunk loop never syncs with the device
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce_sum, h, weight, t, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h, weight, t)
    return total


def full_logits_loss_sum(causal_lm, batch: dict) -> torch.Tensor:
    """The plain path (whole logits tensor); kept as the reference the lean path is tested against."""
    logits = causal_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
