"""Which runtime answers: ``auto``, ``torch`` or ``onnxruntime`` (``snowhub serve --runtime``,
``snowhub predict --runtime``), resolved for a device and built for a hub's artifacts."""

from __future__ import annotations

import importlib.util

import torch

from snowhub.artifacts import Artifacts
from snowhub.errors import ConfigError
from snowhub.serving.runtime import Runtime, TorchRuntime

RUNTIMES = ("auto", "torch", "onnxruntime")


def resolve_runtime(name: str, device: torch.device) -> str:
    """``torch`` or ``onnxruntime`` for the runtime `name` on `device`; ``auto``: ONNX Runtime on a CPU
    (when installed), PyTorch on a GPU.

    Raises:
        ConfigError: an unknown name, ONNX Runtime asked for on a GPU, or not installed.
    """
    if name not in RUNTIMES:
        raise ConfigError(f"`runtime` must be one of {', '.join(RUNTIMES)}, got {name!r}")
    installed = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript"))
    if name == "auto":
        return "onnxruntime" if device.type == "cpu" and installed else "torch"
    if name == "onnxruntime" and device.type != "cpu":
        raise ConfigError(f"`runtime` onnxruntime runs on the CPU; use `runtime` torch on {device}, or `device` cpu")
    if name == "onnxruntime" and not installed:
        raise ConfigError("`runtime` onnxruntime needs ONNX Runtime and onnxscript: pip install 'snowhub[serve]'")
    return name


def make_runtime(name: str, artifacts: Artifacts, threads: int | None = None, serving: bool = False) -> Runtime:
    """The runtime `name` (``auto``, ``torch``, ``onnxruntime``) for the models of `artifacts`.

    Args:
        threads: ONNX Runtime's intra-op threads (None: torch's thread count).
        serving: for a long-running server, which builds missing graphs off the request path; a one-off
            ``predict`` with ``auto`` only uses graphs already built and checked (building one takes
            seconds, more than a few images save), with ``onnxruntime`` it builds them first.

    ``onnxruntime`` is strict: a task whose graph fails its check is refused with the reason. ``auto``
    answers such a task with PyTorch and says why (:meth:`Runtime.fallbacks`).

    Raises:
        ConfigError: see :func:`resolve_runtime`.
    """
    chosen = resolve_runtime(name, artifacts.device)
    if chosen == "torch":
        return TorchRuntime(artifacts)
    from snowhub.serving.runtime_onnx import OnnxRuntime

    build = "background" if serving else ("now" if name == "onnxruntime" else "never")
    return OnnxRuntime(artifacts, threads=threads, strict=name == "onnxruntime", build=build)
