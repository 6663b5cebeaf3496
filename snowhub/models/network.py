"""Source and deltas wired together: one source pass feeds one task (training) or every task (serving)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.fused import FusedDeltas, NotFusable, fusion_key


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
        fused: run the deltas of one shape as one batched computation (:class:`~snowhub.models.fused.FusedDeltas`,
            horizontal fusion; logits equal to float rounding, within 1e-5). Serving uses it; the probe
            logits of the forgetting checker never do. Deltas that cannot be fused run one by one.

    Forward:
        images: uint8 ``(B, 3, H, W)``. Returns task name → logits ``(B, classes)``.
    """

    def __init__(self, source: FrozenSource, deltas: Mapping[str, Delta], source_task: str | None,
                 fused: bool = False):
        super().__init__()
        self.source = source
        self.deltas = nn.ModuleDict(dict(deltas))
        self.source_task = source_task if source.has_head else None
        self.eval()
        self.groups: list[tuple[list[str], FusedDeltas]] = []
        self._single = list(self.deltas)
        if fused and self.deltas:
            self._single = []
            by_key: dict[tuple, list[str]] = {}
            for name, delta in self.deltas.items():
                if all(isinstance(p, ChannelPooling) and p.frozen for p in delta.pools):
                    by_key.setdefault(fusion_key(delta), []).append(name)
                else:  # still training, or a subscription without a fused form
                    self._single.append(name)
            for names in by_key.values():
                try:
                    self.groups.append((names, FusedDeltas([self.deltas[n] for n in names])))
                except NotFusable:
                    self._single += names

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.source.normalizer(images)
        taps, source_logits = self.source(x)
        out: dict[str, torch.Tensor] = {}
        if self.source_task is not None:
            out[self.source_task] = source_logits
        for names, group in self.groups:
            out.update(zip(names, group(x, taps)))
        for name in self._single:
            out[name] = self.deltas[name](x, taps)
        return {name: out[name] for name in ([self.source_task] if self.source_task else []) + list(self.deltas)}
