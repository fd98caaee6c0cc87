"""Which device a run uses, the autocast around its math, and how its peak memory is read."""
from __future__ import annotations

import contextlib
import resource

import torch


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """--device auto picks this process's GPU when torch sees one, else the CPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(requested)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for --precision bf16; fp32 runs without autocast."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def base_dtype(precision: str) -> torch.dtype:
    """The dtype of the frozen base weights: bf16 under bf16 autocast (half the memory, no per-step casts)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def cpu_has_native_bf16() -> bool:
    """Without AVX512-BF16 or AMX, bf16 matmuls are emulated and slower than fp32."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def default_precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def peak_memory_mib(device: torch.device) -> float:
    """torch.cuda.max_memory_allocated on a GPU; the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
