"""Horizontal fusion for serving: T deltas of one :class:`DeltaShape` run as one batched computation.

Serving N tasks (SNOW, section 3.2) runs one source pass and N small deltas. Run one after the other, each
delta is a chain of narrow convolutions that use a CPU or GPU poorly. Here the deltas of one shape (their
classifiers may have different class counts) become one network whose activations hold every task's
channels side by side, ``(B, T·C, H, W)`` task-major:

* every convolution becomes one grouped convolution (``groups × T``; the first one, fed the shared
  images, one convolution with the T weight sets stacked), with its BatchNorm folded in (eval mode);
* the channel pooling of T tasks is one gather of the tap with a ``(T, K)`` index tensor, then the frozen
  per-channel standardisation and score;
* the classifiers are one batched matrix product, padded to the largest class count and sliced.

The logits equal the unfused ones to float rounding (``tests/test_fused_serving.py``: within 1e-5). Only
for inference with frozen channel pooling; the forgetting checker's probe logits never go through here
(``snowhub.probe`` keeps the unfused :func:`~snowhub.models.network.task_logits`, bit-identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from snowhub.models._fusion import NotFusable, fuse
from snowhub.models.blocks import get_family
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta, match_size

__all__ = ["FusedDeltas", "NotFusable", "fusion_key"]

def fusion_key(delta: Delta) -> tuple:
    """Deltas with equal keys can be fused: same block family, taps, widths and K (class counts may differ)."""
    s = delta.shape
    return (s.block, s.taps, s.widths, s.ks)


class _FusedPooling(nn.Module):
    """Frozen channel pooling of T tasks on one tap: one gather with the ``(T, K)`` indices, then
    ``(x - mean) · inv_std · score`` per selected channel (the arithmetic of :class:`ChannelPooling`)."""

    def __init__(self, pools: Sequence[ChannelPooling]):
        super().__init__()
        for p in pools:
            if not isinstance(p, ChannelPooling) or not p.frozen:
                raise NotFusable("channel pooling must be ChannelPooling, frozen")
        idx = [p.indices for p in pools]
        self.register_buffer("indices", torch.cat(idx))  # (T·K,) = the (T, K) index tensor, flattened
        self.register_buffer("shift", torch.cat([p.mean[i] for p, i in zip(pools, idx)]).view(1, -1, 1, 1))
        self.register_buffer("scale", torch.cat([(p.inv_std[i] * p.scores.detach()[i]) for p, i in zip(pools, idx)])
                             .view(1, -1, 1, 1))

    def forward(self, tap: torch.Tensor) -> torch.Tensor:
        """``(B, N, h, w)`` → ``(B, T·K, h, w)``."""
        dtype = torch.promote_types(tap.dtype, torch.float32)
        out = (tap.index_select(1, self.indices).to(dtype) - self.shift.to(dtype)) * self.scale.to(dtype)
        return out.to(tap.dtype)

    def pooled(self, tap: torch.Tensor) -> torch.Tensor:
        """Global average of the pooled maps, ``(B, N, h, w)`` → ``(B, T·K)``: averaged *before* the gather and
        the per-channel affine map (they commute), so the last tap is read once, not T times."""
        m = tap.float().mean(dim=(2, 3))
        return (m.index_select(1, self.indices) - self.shift.view(1, -1)) * self.scale.view(1, -1)


class FusedDeltas(nn.Module):
    """T deltas of one shape (frozen channel pooling, eval mode) as one computation.

    Args:
        deltas: the deltas; :func:`fusion_key` equal, class counts may differ.

    Raises:
        NotFusable: the deltas differ in shape, a module has no fused form, or a channel pooling is not frozen.

    Forward:
        images: normalised images ``(B, 3, H, W)``; taps: the source's taps. Returns a list of T logits
        tensors ``(B, classes_t)``, in the order of `deltas`.
    """

    def __init__(self, deltas: Sequence[Delta]):
        super().__init__()
        if not deltas:
            raise NotFusable("no deltas")
        if len({fusion_key(d) for d in deltas}) != 1:
            raise NotFusable("the deltas have different shapes")
        self.t = len(deltas)
        self.widths, self.ks = deltas[0].shape.widths, deltas[0].shape.ks
        family = get_family(deltas[0].shape.block)  # the family fuses its own blocks (or raises NotFusable)
        self.stem = fuse([d.stem for d in deltas], shared_input=True)
        self.stem_convs = len(deltas[0].stem)
        self.stages = nn.ModuleList(family.fuse_stage([d.stages[i] for d in deltas]) for i in range(len(deltas[0].stages)))
        self.pools = nn.ModuleList(_FusedPooling([d.pools[i] for d in deltas]) for i in range(len(deltas[0].pools)))
        self.classes = [d.shape.num_classes for d in deltas]
        width, c_max = deltas[0].classifier.in_features, max(self.classes)
        weight = torch.zeros(self.t, c_max, width, device=deltas[0].classifier.weight.device)
        bias = torch.zeros(self.t, 1, c_max, device=weight.device)
        for i, d in enumerate(deltas):
            weight[i, :self.classes[i]] = d.classifier.weight.detach()
            bias[i, 0, :self.classes[i]] = d.classifier.bias.detach()
        self.register_buffer("weight", weight.transpose(1, 2).contiguous())  # (T, D, C_max)
        self.register_buffer("bias", bias)
        self.eval()

    def _cat(self, x: torch.Tensor, shared: bool, pooled: torch.Tensor, k: int) -> torch.Tensor:
        """Per task ``concat(x_t, pooled_t)`` in the task-major layout."""
        b, _, h, w = pooled.shape
        t = self.t
        x = match_size(x, pooled)
        xs = x.unsqueeze(1).expand(b, t, *x.shape[1:]) if shared else x.view(b, t, -1, h, w)
        return torch.cat([xs, pooled.view(b, t, k, h, w)], dim=2).view(b, -1, h, w)

    def forward(self, images: torch.Tensor, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x, shared = self.stem(images), self.stem_convs == 0
        for stage, pool, tap, k in zip(self.stages, self.pools, taps, self.ks):
            x, shared = stage(self._cat(x, shared, pool(tap), k)), False
        b = x.shape[0]
        mine = match_size(x, taps[-1]).float().mean(dim=(2, 3))
        mine = mine.unsqueeze(1).expand(b, self.t, mine.shape[1]) if shared else mine.view(b, self.t, -1)
        subscribed = self.pools[-1].pooled(taps[-1]).view(b, self.t, self.ks[-1])
        features = torch.cat([mine, subscribed], dim=2).transpose(0, 1)  # (T, B, D)
        logits = torch.baddbmm(self.bias, features, self.weight)  # (T, B, C_max)
        return [logits[i, :, :c] for i, c in enumerate(self.classes)]
