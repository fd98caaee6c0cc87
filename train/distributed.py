"""Process-group setup and the three collectives the loop needs, on top of torch.distributed.

Data parallelism here is deliberately hand-rolled instead of DistributedDataParallel: only the LoRA
weights train (a few MB), so one coalesced all-reduce of their gradients at the accumulation boundary is
all the communication there is. There are no autograd hooks, no no_sync() contexts and no bucket
ordering to reason about when reading a trace, and 1 process and N processes run the same code.

--fsdp is the exception, for a base model that does not fit one device: FSDP2 (fully_shard, set up in
modeling.shard_model) then owns the gradient communication and all_reduce_grads is not used.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        # Before the process group: NCCL binds its communicator to the current device when it is created, and
        # every process would otherwise start on cuda:0 (and allocate a context there).
        torch.cuda.set_device(local_rank)
    # A finite timeout turns a peer that died mid-collective into an error here instead of a silent hang.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def device_mesh(info: DistInfo, device: torch.device):
    """1-D mesh over all processes for FSDP2, on the process group init() created (gloo on CPU, NCCL on GPU)."""
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (info.world_size,), mesh_dim_names=("fsdp",))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: list[float], device) -> list[float]:
    """Sum a few host numbers over processes (token counts, loss sums) in one collective."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_grads(info: DistInfo, params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over processes: one flat buffer, one all-reduce, at the accumulation boundary.

    The loss was already divided by the *global* supervised-token count, so a sum (not a mean) is the
    exact gradient of the global token-mean loss.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_json(info: DistInfo, text: str, device) -> list[str]:
    """Every process's string, on every process (RNG states for the checkpoint), without pickle."""
    if not info.enabled:
        return [text]
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([data.numel()], device=device))
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    bufs = [torch.zeros(width, dtype=torch.uint8, device=device) for _ in range(info.world_size)]
    dist.all_gather(bufs, padded)
    return [bytes(b[:int(s.item())].cpu().tolist()).decode() for b, s in zip(bufs, sizes)]
