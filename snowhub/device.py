"""Device choice and mixed precision: CUDA with AMP when present, CPU otherwise.

The decisions are pure functions of what the machine reports (:func:`cuda_index` of the device count and
the environment, :func:`amp_dtype_for_capability` of a compute capability, :func:`cpu_quota` of a cgroup
file), so they are tested on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from snowhub.errors import ConfigError

# Compute capability from which a GPU has bfloat16 arithmetic (Ampere, sm80). Below it (V100 sm70, T4 sm75)
# `torch.cuda.is_bf16_supported()` may still say True, counting emulation, but cuDNN has no bfloat16
# convolutions there: float16 with loss scaling is the mixed precision these GPUs run.
BF16_CAPABILITY = (8, 0)


def cuda_index(requested: int | None, device_count: int, environ: Mapping[str, str] | None = None,
               current: int = 0) -> int:
    """The CUDA device index to use.

    Args:
        requested: the N of ``cuda:N`` when given, else None (``auto`` or ``cuda``).
        device_count: CUDA devices visible to this process.
        environ: the process environment (default :data:`os.environ`); under ``torchrun`` each process
            has its ``LOCAL_RANK``.
        current: the current CUDA device (used when nothing else says which).

    An explicit N is used as given. Otherwise ``LOCAL_RANK`` picks the GPU of this rank (on a launcher that
    shows each rank only its own GPU, ``device_count`` is 1 and that GPU is used), else `current`.

    Raises:
        ConfigError: N or ``LOCAL_RANK`` names a GPU that is not visible, or ``LOCAL_RANK`` is not a number.
    """
    environ = os.environ if environ is None else environ
    if requested is not None:
        if not 0 <= requested < device_count:
            raise ConfigError(f"`device` cuda:{requested} was asked for but this process sees "
                              f"{device_count} CUDA GPU(s) (cuda:0 to cuda:{device_count - 1})")
        return requested
    local_rank = environ.get("LOCAL_RANK")
    if local_rank is None or local_rank.strip() == "":
        return current
    try:
        rank = int(local_rank)
    except ValueError:
        raise ConfigError(f"LOCAL_RANK={local_rank!r} is not a number (torchrun sets it to 0, 1, …)") from None
    if 0 <= rank < device_count:
        return rank
    if device_count == 1 and rank >= 0:
        return 0  # each rank sees only its own GPU (CUDA_VISIBLE_DEVICES set per rank)
    raise ConfigError(f"LOCAL_RANK={rank} but this process sees {device_count} CUDA GPU(s); start at most one "
                      f"process per GPU, or pass `device` cuda:N")


def pick_device(requested: str = "auto") -> torch.device:
    """``"auto"`` → a CUDA GPU if one is usable, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    A CUDA device always comes back with its index (``cuda:N``): the one asked for, else this rank's GPU under
    ``torchrun`` (``LOCAL_RANK``), else the current one (see :func:`cuda_index`); it is also made the current
    CUDA device of the calling thread, so that nothing (pinned-memory threads, cuDNN handles) opens a context
    on GPU 0 for every rank. Choosing the CPU turns on flushing of denormal floats for the process (see
    below).

    Raises:
        ConfigError: an unknown device string, CUDA requested where there is none, or a GPU index that is
        not visible.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device` cuda was asked for but no CUDA GPU is available; use `device` cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {requested!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda":
        current = torch.cuda.current_device() if device.index is None else 0
        index = cuda_index(device.index, torch.cuda.device_count(), os.environ, current)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    # Decaying weights reach denormal floats and slow CPU training about 4x; flushing them to zero
    # is harmless here. Set on every CPU path (train, probe, verify) so their logits stay comparable.
    torch.set_flush_denormal(True)
    return device


def amp_dtype_for_capability(capability: tuple[int, int]) -> torch.dtype:
    """The autocast dtype for a CUDA GPU of compute capability ``(major, minor)``: bfloat16 from sm80
    (Ampere) on, float16 (with loss scaling, see :class:`snowhub.training.SGDSteps`) below."""
    return torch.bfloat16 if tuple(capability) >= BF16_CAPABILITY else torch.float16


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`, decided by the compute capability of that GPU (not of the current
    one, see :func:`amp_dtype_for_capability`); None on the CPU."""
    if device.type != "cuda":
        return None
    return amp_dtype_for_capability(torch.cuda.get_device_capability(device))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for `device` (a no-op on CPU, where float32 keeps results reproducible)."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def cpu_quota(cpu_max: str | None = None, cfs_quota_us: str | None = None, cfs_period_us: str | None = None
              ) -> float | None:
    """CPUs a cgroup CPU quota allows (a container's ``--cpus``), or None when there is no quota.

    Args:
        cpu_max: the text of cgroup v2's ``cpu.max`` (``"max 100000"`` or ``"<quota> <period>"``).
        cfs_quota_us, cfs_period_us: cgroup v1's ``cpu.cfs_quota_us`` (-1 = none) and ``cpu.cfs_period_us``.
    """
    try:
        if cpu_max is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
        if cfs_quota_us is not None and cfs_period_us is not None and int(cfs_quota_us) > 0:
            return int(cfs_quota_us) / int(cfs_period_us)
    except ValueError:
        pass
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def available_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """CPUs this process may use: those it may run on (``os.sched_getaffinity``: taskset, cpusets, a
    container's ``--cpuset-cpus``; ``os.cpu_count()`` counts the whole machine), capped by a cgroup CPU
    quota (a container's ``--cpus``) when one is set.

    Args:
        affinity, quota: what the machine says (for tests); read from the process and its cgroup when None.
    """
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            affinity = os.cpu_count() or 1
    if quota is None:
        cpu_max = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2, else v1
        quota = cpu_quota(cpu_max) if cpu_max is not None else cpu_quota(
            None, _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
    cpus = max(1, affinity)
    if quota is not None and quota > 0:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def default_num_workers(device: torch.device, cpus: int | None = None) -> int:
    """DataLoader workers: several on a GPU machine; on a small CPU machine the model needs the cores.

    Args:
        cpus: CPUs this process may use (default :func:`available_cpus`).
    """
    cpus = available_cpus() if cpus is None else cpus
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return 1 if cpus > 2 else 0
