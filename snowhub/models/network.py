"""Source and deltas wired together: one source pass feeds one task (training) or every task (serving)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource


def task_logits(source: FrozenSource, delta: Delta, images: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, classes)`` of `delta` for uint8 `images` ``(B, 3, H, W)``; the source runs without gradients."""
    x = source.normalizer(images)
    taps, _ = source(x)
    return delta(x, taps)


class MultiTaskNetwork(nn.Module):
    """Serve every task from one source forward pass (SNOW, section 3.2).

    Args:
        source: the frozen source; its own head (if any) is served under `source_task`.
        deltas: task name → delta, with frozen channel pooling.
        source_task: name under which the source's logits are returned, or None to skip them.

    Forward:
        images: uint8 ``(B, 3, H, W)``. Returns task name → logits ``(B, classes)``.
    """

    def __init__(self, source: FrozenSource, deltas: Mapping[str, Delta], source_task: str | None):
        super().__init__()
        self.source = source
        self.deltas = nn.ModuleDict(dict(deltas))
        self.source_task = source_task if source.has_head else None
        self.eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.source.normalizer(images)
        taps, source_logits = self.source(x)
        out: dict[str, torch.Tensor] = {}
        if self.source_task is not None:
            out[self.source_task] = source_logits
        for name, delta in self.deltas.items():
            out[name] = delta(x, taps)
        return out
