"""Device choice and mixed precision: CUDA with AMP when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import os

import torch

from snowhub.errors import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    """``"auto"`` → the first CUDA GPU if one is usable, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Choosing the CPU turns on flushing of denormal floats for the process (see below).

    Raises:
        ConfigError: an unknown device string, or CUDA requested where there is none.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {requested!r}; use auto, cpu or cuda[:N]")
    if device.type == "cpu":
        # Decaying weights reach denormal floats and slow CPU training about 4x; flushing them to zero
        # is harmless here. Set on every CPU path (train, probe, verify) so their logits stay comparable.
        torch.set_flush_denormal(True)
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bfloat16 where the GPU supports it, else float16; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for `device` (a no-op on CPU, where float32 keeps results reproducible)."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers: several on a GPU machine; on a small CPU machine the model needs the cores."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return 1 if cpus > 2 else 0
