"""Token-summed cross-entropy, computed without materialising batch x seq x vocab logits.

The loop divides these *sums* by the number of supervised tokens in the whole accumulation window (all
micro-batches, all processes), so every supervised token weighs the same whatever batch it landed in.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from train.batching import IGNORE_INDEX


class LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), the LM head run `chunk_size` rows at a time.

    The gradient with respect to `hidden` is computed in the forward pass, chunk by chunk, while each
    chunk's logits exist anyway: d(CE)/d(logits) = softmax - onehot, times the head weight. Backward then
    only scales that stored (positions x hidden) tensor. Compared with checkpointing each chunk through
    autograd, the LM head matmul runs twice per chunk instead of three times, and log_softmax's backward
    never runs. With LoRA the head weight is frozen and no gradient is computed for it; when it trains
    (--no-use-lora) its gradient, (softmax - onehot)^T times the chunk's hidden states, is summed the same way.
    Under autocast the logits come from autocast's matmul dtype, as F.linear would give them; the softmax
    and the loss are fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        want_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grad else None
        want_weight_grad = ctx.needs_input_grad[1]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            mm_logits = F.linear(h, weight)
            logits = mm_logits.float()
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            # One pass of exp over the chunk serves both the loss (log-sum-exp) and its gradient (softmax);
            # in place, because the fp32 logits are not needed again.
            row_max = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(row_max).exp_()
            sum_exp = exp.sum(dim=-1)
            total += (row_max.squeeze(1) + sum_exp.log() - target_logit).sum()
            if want_grad or want_weight_grad:
                probs = exp.div_(sum_exp[:, None])
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                # The same dtype path as autograd through F.linear would take: the gradient of the logits in
                # the matmul's dtype, times the weight (or, for the weight, times the hidden states).
                grad_logits = probs.to(mm_logits.dtype)
                if want_grad:
                    grad_hidden[start:start + chunk_size] = grad_logits @ weight.to(mm_logits.dtype)
                if want_weight_grad:
                    grad_weight += grad_logits.T @ h.to(mm_logits.dtype)
                del probs, grad_logits
            # Free this chunk's logits before the next chunk allocates its own: the loop variables would
            # otherwise keep them alive, and the peak would be one and a half chunks (train/memory_plan.py).
            del mm_logits, logits, exp
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return ((grad_hidden * grad_total).to(ctx.hidden_dtype) if grad_hidden is not None else None,
                (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None, None, None)


def trunk_hidden_states(model, batch: dict) -> torch.Tensor:
    """Final-norm hidden states of positions shared_prefix .. seq-1 (all positions when it is 0).

    No attention mask goes to the model: collate() pads on the right, and under a causal mask a real token
    never attends to a later position, so the padding changes nothing at the positions that carry labels.
    Without a mask SDPA takes its causal kernel, which skips the upper triangle instead of masking it.

    With a shared prefix the common tokens run once, as a batch of one, into a key/value cache; the cache
    is repeated for every row and the rows' remaining tokens attend to it. The repeat and the cache's
    concatenation are ordinary autograd ops, so gradients from every row flow back into the one prefix
    pass: the same loss and gradients as running each row whole, for (rows - 1) x prefix fewer tokens.
    """
    ids, prefix = batch["input_ids"], batch.get("shared_prefix", 0)
    if prefix == 0:
        return model(input_ids=ids, use_cache=False).last_hidden_state
    cache = DynamicCache(config=model.config)
    arg = cache_argument(model)
    model(input_ids=ids[:1, :prefix], use_cache=True, **{arg: cache})
    cache.batch_repeat_interleave(ids.shape[0])
    return model(input_ids=ids[:, prefix:], use_cache=True, **{arg: cache}).last_hidden_state


def cache_argument(model) -> str:
    """The decoder's name for its key/value cache: `cache` in recent transformers 5, `past_key_values` before
    (5.17, say). An unknown keyword would be swallowed by **kwargs and the rows would run without the prefix."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def labels_only_loss_sum(causal_lm, batch: dict, chunk_size: int) -> torch.Tensor:
    """Sum of CE over supervised positions only, LM head run in chunks of `chunk_size` positions.

    Peak memory of the head is one chunk of logits (chunk_size x vocab, in fp32 and the matmul dtype)
    instead of batch x seq x vocab: for 2 x 2048 positions and a 131072 vocabulary, 0.75 GiB for a chunk of
    1024 instead of 2 GiB of fp32 logits plus their gradient.
    """
    trunk = trunk_hidden_states(causal_lm.model, batch)
    hidden = trunk[:, :-1].reshape(-1, trunk.shape[-1])
    hidden = hidden.index_select(0, batch["label_positions"])
    return LinearCrossEntropySum.apply(hidden, causal_lm.lm_head.weight, batch["targets"], chunk_size)


def full_logits_loss_sum(causal_lm, batch: dict) -> torch.Tensor:
    """The plain path (whole logits tensor, padding mask given); the reference the lean path is tested against."""
    logits = causal_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
