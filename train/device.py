"""Which device a run uses, the autocast around its math, and how its peak memory is read."""
from __future__ import annotations

import contextlib
import ctypes
import os
import resource
from pathlib import Path

import torch

from contract.errors import UserError

# Above this many parameters a CPU run is hours per step: --device auto never picks the CPU for it by itself.
LARGE_MODEL_PARAMS = 1_000_000_000
# glibc's M_MMAP_THRESHOLD, and the block size from which the CPU allocator is asked to map memory afresh.
_M_MMAP_THRESHOLD = -3
CPU_MMAP_THRESHOLD = 1 << 20


class NoUsableGPU(UserError):
    """--device auto found no GPU for a model that is too big to train on the CPU by accident."""


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


def expandable_cuda_segments() -> None:
    """Let the CUDA caching allocator grow segments in place instead of caching one block per size.

    Variable-length SFT batches otherwise leave reserved blocks no later request fits, and the process runs
    out of memory with gigabytes reserved but free. Read when CUDA first allocates, so this runs first;
    an allocator configuration the user set is left alone.
    """
    if "PYTORCH_ALLOC_CONF" not in os.environ and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"


def peak_reserved_mib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_reserved on a GPU (what the allocator held at most); None elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return None


def note_emulated_bf16(device: torch.device, precision: str, say) -> str | None:
    """For bf16 on a CPU that emulates it: say (and return) one line on how much slower a matmul is here in bf16
    than in fp32, measured now on a small matmul in both dtypes (cheap enough for every start); else None."""
    if device.type != "cpu" or precision != "bf16" or cpu_has_native_bf16():
        return None
    from train.flops import measure_matmul_peak

    size = 512   # large enough that fp32 is not bound by call overhead, small enough to stay cheap in bf16
    fp32, bf16 = (measure_matmul_peak(device, dtype, size=size, seconds=0.1) for dtype in (torch.float32, torch.bfloat16))
    line = (f"--precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): a {size}x{size} matmul takes "
            f"{fp32 / bf16:.1f}x as long here as in fp32; --precision fp32 trains faster on this machine")
    say(line)
    return line


def flush_denormals() -> None:
    """Flush denormal floats to zero on this thread, for CPU training.

    Adam's second moments decay towards zero and turn denormal; x86 handles denormals in microcode, tens of times
    slower. Flushing them changes nothing measurable in the result. numpy reads its float limits from the FPU
    the first time numpy.ma is imported (np.unique imports it lazily, in the data build); under flushing it
    finds no subnormals and warns, so numpy.ma is imported first, while the FPU still has them.
    """
    import numpy.ma  # noqa: F401

    torch.set_flush_denormal(True)


def peak_memory_mib(device: torch.device) -> float:
    """torch.cuda.max_memory_allocated on a GPU; the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def no_cuda_reason() -> str:
    """Why torch sees no GPU, in words a user can act on."""
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install the CUDA build of the same "
                "version (the wheel from PyPI on Linux x86_64, or the PyTorch index for your CUDA version)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from this process"
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ("no NVIDIA driver was found (libcuda.so.1 cannot be loaded): install the driver, and in a "
                "container run it with the NVIDIA Container Toolkit (docker compose passes the GPU; docs/usage.md)")
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        driver = (version.value // 1000, version.value % 1000 // 10)
        wanted = tuple(int(x) for x in torch.version.cuda.split(".")[:2])
        if driver < wanted:
            return (f"the NVIDIA driver supports CUDA up to {driver[0]}.{driver[1]}, but this torch was built for "
                    f"CUDA {torch.version.cuda}: update the driver, or install a torch built for CUDA "
                    f"{driver[0]}.{driver[1]} or older")
    status = libcuda.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver failed to start (cuInit error {status}); `nvidia-smi` shows whether it works"
    return "torch.cuda.is_available() is False although a driver is present; `nvidia-smi` shows the GPUs it sees"


def refuse_silent_cpu(requested: str, n_params: int) -> None:
    """--device auto with no usable GPU and a model above LARGE_MODEL_PARAMS: stop, say why, say how to insist."""
    if requested != "auto" or n_params <= LARGE_MODEL_PARAMS or torch.cuda.is_available():
        return
    raise NoUsableGPU(f"--device auto found no usable GPU for a {n_params / 1e9:.1f} B-parameter model: "
                      f"{no_cuda_reason()}. Training it on the CPU takes minutes per step and ~1.1x its bf16 "
                      "weights in RAM; to do that anyway, pass --device cpu")


def steady_cpu_allocator() -> bool:
    """Make glibc return every freed block of 1 MiB or more to the system at once.

    By default glibc raises its mmap threshold each time a large block is freed, so later activations of the
    same size come from the heap, whose freed memory is mostly kept: the RSS then climbs step after step and
    the peak depends on the history of the run, not on its settings (docs/performance.md, "The memory plan").
    A fixed threshold keeps the RSS at what is alive. Leaves an explicit MALLOC_MMAP_THRESHOLD_ alone.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD))


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16: timings are only comparable on the same kind."""
    import platform
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({'native' if cpu_has_native_bf16() else 'no native'} bf16)"
