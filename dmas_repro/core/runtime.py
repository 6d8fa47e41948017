"""Runtime facts, one table each: the device, the dtype names, autocast, the peak FLOP/s used for
MFU, memory readings and the description of the machine a number was measured on.

Every stage resolves these here and nowhere else:

- devices: `resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps", local_rank)`;
- dtypes: one vocabulary (`DTYPES`: float32/fp32, bfloat16/bf16, float16/fp16, and "auto" =
  bfloat16 on CUDA, float32 elsewhere). Training reads a dtype as its compute precision (bf16
  autocast over float32 master weights); evaluation and chat as the dtype of the weights;
- peak FLOP/s: `GPU_PEAK_BF16` (dense tensor-core bf16, by GPU name) or, for devices not in the
  table, the best rate of a square matmul measured once per process (`peak_flops`);
- `machine_info` and `git_commit` say where and from which source a number came.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

# ---------------------------------------------------------------- dtypes
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
TRAIN_DTYPES = ("float32", "bfloat16")  # training: float32, or bf16 autocast over float32 weights


def dtype_name(name: str | None, device=None) -> str:
    """The canonical name (float32 | bfloat16 | float16) of a dtype name or alias; "auto"/None:
    bfloat16 on a CUDA device, float32 elsewhere."""
    if name in (None, "", "auto"):
        return "bfloat16" if _device_type(device) == "cuda" else "float32"
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose auto or one of {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def torch_dtype(name: str | None, device=None):
    """The torch dtype of a dtype name (see `dtype_name`)."""
    import torch

    return getattr(torch, dtype_name(name, device))


def parse_dtype(name: str | None):
    """A torch dtype for an explicit name, None for None ("as stored")."""
    return None if name is None else torch_dtype(name)


def autocast(device, name: str | None) -> tuple[Callable[[], contextlib.AbstractContextManager], object]:
    """(context factory, compute dtype) of a training precision: float32 (no autocast) or bf16 autocast."""
    import torch

    canon = dtype_name(name, device)
    if canon not in TRAIN_DTYPES:
        raise UserError(f"dtype {name!r}: training runs in float32 or bfloat16 (autocast)")
    if canon == "float32":
        return (lambda: contextlib.nullcontext()), torch.float32
    dev = _device_type(device)
    return (lambda: torch.autocast(dev, dtype=torch.bfloat16)), torch.bfloat16


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return getattr(device, "type", None) or str(device).split(":")[0]


# ---------------------------------------------------------------- devices
def resolve_device(name: str | None = "auto", local_rank: int = 0):
    """'auto' -> cuda:LOCAL_RANK when a GPU is there, else cpu; 'cuda' -> cuda:LOCAL_RANK."""
    import torch

    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA GPU is available")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N, mps)") from None


def synchronize(device) -> None:
    import torch

    if _device_type(device) == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- peak FLOP/s
# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by substring of torch.cuda.get_device_name(),
# matched in this order (the more specific names first). float32 training uses TF32: half of these.
GPU_PEAK_BF16: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "A6000": 154.8e12,  # RTX A6000, the authors' GPU
    "L40S": 362e12,
    "A40": 149.7e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165.2e12,
    "3090": 71e12,
    "V100": 125e12,  # fp16 (no bf16 on Volta)
}


def gpu_peak_bf16(name: str) -> float | None:
    """The table's dense bf16 peak for a GPU name, or None."""
    for key, val in GPU_PEAK_BF16.items():
        if key in name:
            return val
    return None


def peak_flops(device, dtype=None) -> tuple[float, str]:
    """Per-device peak FLOP/s for MFU and where it comes from: a known GPU's bf16 tensor peak (half
    of it for float32/TF32), else the best rate of a square matmul in `dtype`, measured once per
    process and device (best of several, so one slow repetition on a busy machine does not move it)."""
    import torch

    dtype = dtype or torch.float32
    if _device_type(device) == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_bf16(name)
        if peak is not None:
            half = dtype not in (torch.bfloat16, torch.float16)
            return (peak / 2 if half else peak), f"table: {name} dense bf16" + (" / 2 (tf32)" if half else "")
    rate, n = _measured_matmul_peak(str(device), str(dtype))
    return rate, f"measured: best {str(dtype).removeprefix('torch.')} {n}x{n} matmul on {device}"


@functools.cache
def _measured_matmul_peak(device: str, dtype_str: str, repeats: int = 7, budget_s: float = 1.0) -> tuple[float, int]:
    """Best rate of up to `repeats` timed n x n matmuls after a warm-up, within about `budget_s` seconds
    (at least two timed ones: bf16 on a CPU without bf16 units is slow)."""
    import torch

    dtype = getattr(torch, dtype_str.removeprefix("torch."))
    n = 8192 if device.startswith("cuda") else 1024
    gen = torch.Generator().manual_seed(0)  # never the global RNG: measuring must not change a run
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    a @ b
    synchronize(device)
    best, t_start = float("inf"), time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - t_start > budget_s:
            break
    return 2 * n**3 / best, n


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    """This process's resident memory now."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's high-water mark)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---------------------------------------------------------------- provenance
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info(device=None) -> dict:
    """Where a measurement ran: device, CPU, cores, memory, load, library versions, time."""
    import psutil
    import torch

    dev = str(device) if device is not None else "cpu"
    info = {
        "device": dev,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total,
        "load_avg_1m": load_average(),
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for pkg in ("transformers", "lm_eval"):
        with contextlib.suppress(ImportError):
            info[pkg] = __import__(pkg).__version__
    if _device_type(device) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> str | None:
    """The commit of the dmas-repro source tree, with '-dirty' when it has local changes; None
    outside a git checkout (an installed package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
