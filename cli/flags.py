"""The one place Python parameter names become command-line flags.

The library's messages name a parameter as Python spells it, in backticks (``TrainConfig(lr=-1)`` raises
"`lr` must be a positive number, got -1"); :func:`as_flags` rewrites each name this CLI has a flag for
("--lr must be a positive number, got -1") when it prints the error. A name without a flag stays as it is.
"""

from __future__ import annotations

import re

# parameter (TrainConfig, DeltaConfig, RunOptions, Hub methods) → the flag that sets it
FLAGS = {
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "image_size": "--image-size",
    "val_fraction": "--val-fraction", "hflip": "--hflip", "seed": "--seed", "feature_cache": "--cache-features",
    "source_precision": "--source-precision", "k_ratio": "--k-ratio", "head_k_ratio": "--head-k-ratio",
    "width_divisor": "--width-divisor", "noise_var": "--noise-var", "budget": "--budget", "num_workers": "--workers",
    "low_memory": "--low-memory", "cache_limit_gib": "--cache-limit", "processes": "--nproc-per-node",
    "device": "--device", "opset": "--opset", "output": "--output", "top": "--top", "tasks": "--task",
    "new_name": "--as", "strict": "--strict", "registry": "--registry", "data": "--data", "weights": "--weights",
    "taps": "--taps", "source_head": "--source-head", "path": "--hub", "runtime": "--runtime",
    "source": "--source", "allow_unsigned": "--allow-unsigned", "new_version": "--new-version",
    # snowhub serve (ServeConfig)
    "max_batch_size": "--max-batch-size", "max_wait_ms": "--max-wait-ms", "max_image_bytes": "--max-image-bytes",
    "max_images": "--max-images", "max_image_pixels": "--max-image-pixels",
    "max_request_pixels": "--max-request-pixels", "max_queue": "--max-queue", "threads": "--threads",
}
# a command whose flag for a parameter differs from FLAGS' (serve takes `tasks` as one --tasks list)
SERVE_FLAGS = {**FLAGS, "tasks": "--tasks"}
_NAME = re.compile(r"`([a-z_]+)`")


def as_flags(message: str, flags: dict[str, str] = FLAGS) -> str:
    """`message` with every backticked parameter name that has a flag in `flags` replaced by the flag."""
    return _NAME.sub(lambda m: flags.get(m.group(1), m.group(0)), message)
