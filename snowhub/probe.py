"""Probe sets: the fixed evaluation images the forgetting checker re-runs for every task.

At registration a small, deterministic, class-balanced subset of the validation images is preprocessed
once (uint8, exactly as ``predict`` would) and stored in the hub with the logits the task produced on it.
Training data itself is never kept (SNOW needs no persistent dataset).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snowhub.data import eval_transform, load_rgb
from snowhub.evaluation import accuracy_counts
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.numerics import exact_float32, numerics_environment

# Probe logits recomputed in another numerics environment (see snowhub.numerics) differ in the last bits.
# Measured on real hubs (docs/reliability.md): other CPU kernel families gave at most 2.4e-5 on logits up to
# ~26 in size. The tolerance is 40x that; beyond it, or with any probe label changed, a task has changed.
MEASURED_CROSS_KERNEL_DIFF = 2.4e-5
LOGIT_TOLERANCE = 40 * MEASURED_CROSS_KERNEL_DIFF

# Images per forward pass of the probe logits of a task registered now, recorded with the task
# (``hyperparams["probe_batch"]``) and used by every re-run. Logits can depend on the batch in their last bits
# (ResNet-50 at 224 px on this CPU: batches of 64, 32 and 16 gave equal logits, 8 and 1 differed by 5.3e-5), so a
# check must run the batch they were recorded in. 16 keeps the probe pass of a 224 px source small beside the
# training (docs/benchmarks.md, "Low memory by default"); tasks registered before the batch was recorded used 64.
PROBE_BATCH = 16
LEGACY_PROBE_BATCH = 64


def probe_batch(hyperparams: Mapping[str, object]) -> int:
    """The batch a task's probe logits were computed in, from its recorded hyperparameters."""
    return int(hyperparams.get("probe_batch", LEGACY_PROBE_BATCH))


@dataclass
class ProbeSet:
    """Preprocessed probe images and what the task answered on them at registration.

    Attributes:
        images: uint8 ``(P, 3, S, S)``.
        labels: int64 ``(P,)``.
        logits: float32 ``(P, classes)``, from the registered delta, in float32 on the registering device.
        environment: the numerics environment the logits were computed in (:func:`numerics_environment`),
            or None when unknown (it is recorded in the task's registry record, not in the file).
        batch_size: images per forward pass the logits were computed in (:data:`PROBE_BATCH`; recorded in
            the task's hyperparameters, not in the file).
    """

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    environment: dict | None = field(default=None, compare=False)
    batch_size: int = field(default=LEGACY_PROBE_BATCH, compare=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "labels": self.labels, "logits": self.logits}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor], environment: dict | None = None,
                     batch_size: int = LEGACY_PROBE_BATCH) -> "ProbeSet":
        """A probe set read back from its file (`environment` and `batch_size` come from the task's record)."""
        return ProbeSet(t["images"], t["labels"], t["logits"], environment, batch_size)

    def top1(self) -> float:
        """Accuracy of the recorded logits, %."""
        return 100.0 * accuracy_counts(self.logits, self.labels)[0] / len(self.labels)


def choose_probe_samples(samples: Sequence[tuple[Path, int]], per_class: int, limit: int) -> list[tuple[Path, int]]:
    """Up to `per_class` images of each class, `limit` in all, taken round-robin so classes stay balanced."""
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for path, label in sorted(samples, key=lambda s: (s[1], str(s[0]))):
        if len(by_class[label]) < per_class:
            by_class[label].append((path, label))
    chosen: list[tuple[Path, int]] = []
    for rank in range(per_class):
        for label in sorted(by_class):
            if rank < len(by_class[label]) and len(chosen) < limit:
                chosen.append(by_class[label][rank])
    return chosen


@torch.no_grad()
def probe_logits(source: FrozenSource, delta: Delta, images: torch.Tensor, device: torch.device,
                 batch_size: int) -> torch.Tensor:
    """Float32 logits ``(P, classes)`` of `delta` on uint8 `images` ``(P, 3, S, S)``, under :func:`exact_float32`,
    `batch_size` images per forward pass.

    Bit-identical run to run in one numerics environment at one `batch_size`; see :mod:`snowhub.numerics`
    for across environments, :data:`PROBE_BATCH` for across batches.
    """
    delta.eval()
    with exact_float32(device):
        out = [task_logits(source, delta, images[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def build_probe_set(source: FrozenSource, delta: Delta, samples: Sequence[tuple[Path, int]], image_size: int,
                    device: torch.device, per_class: int, limit: int) -> ProbeSet:
    """Preprocess the chosen probe images and record `delta`'s logits on them, :data:`PROBE_BATCH` at a time.

    Raises:
        DataError: a probe image cannot be read.
    """
    chosen = choose_probe_samples(samples, per_class, limit)
    transform = eval_transform(image_size, source.spec.eval_resize_ratio)
    images = torch.stack([transform(load_rgb(path)) for path, _ in chosen])
    labels = torch.tensor([label for _, label in chosen], dtype=torch.long)
    logits = probe_logits(source, delta, images, device, PROBE_BATCH)
    return ProbeSet(images, labels, logits, numerics_environment(device), PROBE_BATCH)


def logits_digest(logits: torch.Tensor) -> str:
    """sha256 of float32 logits bytes: equal digests mean bit-identical answers."""
    return hashlib.sha256(logits.float().contiguous().numpy().tobytes()).hexdigest()
