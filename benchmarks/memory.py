"""Memory readings of the current process: resident set size on the CPU, allocator peaks on CUDA.

On CUDA the paper's figure is ``torch.cuda.max_memory_allocated`` (weights, gradients, optimizer state,
activations). The CPU counterpart used here is the process's peak resident set size minus its resident set
size right after importing the libraries, before any model exists: the same contents, plus the data
pipeline. Each method runs in a fresh process, so the peak is its own.
"""

from __future__ import annotations

import resource

import torch

MIB = 1024 * 1024


def current_rss_mib() -> float:
    """Resident set size now, MiB (``/proc/self/status`` VmRSS)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``getrusage`` ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last reset, MiB; None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB
