"""The numerics environment of probe logits: what decides their last bits, recorded and compared.

Probe logits (see :mod:`snowhub.probe`) are recomputed by ``verify-forgetting``, possibly on another
machine. The same float32 network gives bit-identical logits only where the same kernels run: the same
device and model, the same CPU kernel family (``torch.backends.cpu.get_cpu_capability()`` and the limits a
process can set with ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``), the same torch build, and on CUDA
the same cuDNN. Elsewhere the answers differ in the last bits (measured in ``docs/reliability.md``), so the
checker must know which promise it can check: bit-identical, or within a tolerance.

Probe logits are always computed under :func:`exact_float32`: float32, no autocast, TF32 off and cuDNN's
deterministic algorithms on CUDA, so a task registered on a GPU can be verified on a CPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator, Mapping
from functools import lru_cache

import torch

# Environment variables that limit which CPU kernels a process may use (oneDNN, ATen's dispatch).
KERNEL_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Run the block in plain float32 on `device`: no autocast; on CUDA no TF32 and deterministic cuDNN.

    The process-wide flags are restored afterwards, whatever the block raised.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved[:4]
        torch.set_float32_matmul_precision(saved[4])


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def numerics_environment(device: torch.device) -> dict[str, object]:
    """What probe logits computed now on `device` under :func:`exact_float32` depend on.

    Returns a JSON-ready dict: ``device`` (``"cpu"``/``"cuda"``), ``device_name``, ``torch``, ``threads``,
    and on CPU ``cpu_capability`` and ``kernel_limits`` (the variables of :data:`KERNEL_LIMIT_VARIABLES`
    set in this process); on CUDA ``compute_capability``, ``cuda``, ``cudnn`` and ``tf32`` (always False
    under :func:`exact_float32`, recorded so the record says so).
    """
    env: dict[str, object] = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        with exact_float32(device):
            tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        env |= {"device_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}",
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "tf32": tf32}
    else:
        env |= {"device_name": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "kernel_limits": {k: os.environ[k] for k in KERNEL_LIMIT_VARIABLES if k in os.environ}}
    return env


def same_environment(recorded: Mapping[str, object] | None, current: Mapping[str, object]) -> bool | None:
    """True when `current` runs the kernels `recorded` ran (so logits must be bit-identical); None if unknown.

    Every recorded field takes part, the thread count too: 1 and 2 threads gave bit-identical logits here,
    but nothing promises that for every thread count, and a false "changed" is worse than a weaker check.
    """
    if not recorded:
        return None
    return dict(recorded) == dict(current)


def describe_environment(env: Mapping[str, object] | None) -> str:
    """One short line for tables, e.g. ``cpu AMD EPYC, AVX512, torch 2.14.1, 2 threads``."""
    if not env:
        return "not recorded"
    if env.get("device") == "cuda":
        parts = [f"cuda {env.get('device_name')}", f"sm{env.get('compute_capability')}", f"cuDNN {env.get('cudnn')}"]
    else:
        limits = env.get("kernel_limits") or {}
        parts = [f"cpu {env.get('device_name')}", str(env.get("cpu_capability")),
                 *(f"{k}={v}" for k, v in dict(limits).items())]
    return ", ".join(parts + [f"torch {env.get('torch')}", f"{env.get('threads')} threads"])
