"""What a run holds (Run) and what its loop counts (LoopState), as typed objects.

LoopState is the part of a run that a checkpoint must carry for an exact resume; to_dict/from_dict are its
checkpoint form (plain JSON). Run is everything setup() builds for fit(), evaluate() and finish().
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from train.batching import Row
from train.config import TrainConfig
from train.distributed import DistInfo
from train.memory_plan import MemoryPlan
from train.run_log import RunLog


@dataclass
class LoopState:
    step: int = 0                        # optimizer steps taken
    epoch: int = 0                       # epoch the next micro-batch belongs to
    micro_index: int = 0                 # position of the next micro-batch in that epoch's plan
    consecutive_skips: int = 0           # non-finite steps in a row (the NaN guard's budget)
    skipped_steps: int = 0               # non-finite steps in the whole run
    eval_loss_before: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - saved.keys()
        if missing:
            raise KeyError(f"loop state lacks {sorted(missing)}")
        return cls(**{k: saved[k] for k in names})


@dataclass
class Run:
    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    log: RunLog
    model: torch.nn.Module
    params: dict[str, torch.nn.Parameter]      # the trainable (LoRA) tensors by name
    optimizer: torch.optim.Optimizer
    fsdp: torch.nn.Module | None = None        # the FSDP2 root under --fsdp
    tokenizer: object = None
    train_rows: list[Row] = field(default_factory=list)
    val_rows: list[Row] = field(default_factory=list)
    data_stats: dict = field(default_factory=dict)
    state: LoopState = field(default_factory=LoopState)
    total_steps: int = 0
    n_trainable: int = 0
    flops_per_token: dict = field(default_factory=dict)
    peak_flops: float = 0.0             # the MFU denominator (train.flops.mfu_peak)
    peak_flops_source: str = ""
    measured_flops: float = 0.0         # the matmul rate measured at start-up, reported beside it
    memory_plan: MemoryPlan | None = None     # what setup() predicted and chose before loading
    started: float = field(default_factory=time.time)
    stopped_early: bool = False

    @property
    def micro_per_step(self) -> int:
        """Global micro-batches per optimizer step."""
        return self.cfg.grad_accum * self.info.world_size
