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
from torch.nn import functional as F
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta

_STATELESS = (nn.ReLU, nn.ReLU6, nn.Identity, nn.SiLU, nn.Hardswish)


class NotFusable(ValueError):
    """The deltas cannot be fused (another layout, a module type this file does not know, or training)."""


def fusion_key(delta: Delta) -> tuple:
    """Deltas with equal keys can be fused: same block family, taps, widths and K (class counts may differ)."""
    s = delta.shape
    return (s.block, s.taps, s.widths, s.ks)


def _fold(convs: Sequence[nn.Conv2d], bns: Sequence[nn.BatchNorm2d] | None, shared_input: bool) -> nn.Conv2d:
    """One grouped convolution computing every task's ``conv`` (then eval ``bn``) on the task-major layout."""
    c = convs[0]
    t = len(convs)
    weights, biases = [], []
    for i, conv in enumerate(convs):
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
        if bns is not None:
            bn = bns[i]
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - bn.running_mean) * scale + bn.bias.detach()
        weights.append(w)
        biases.append(b)
    if shared_input and c.groups != 1:
        raise NotFusable("a grouped convolution on the shared input")
    cin = c.in_channels if shared_input else c.in_channels * t
    fused = nn.Conv2d(cin, c.out_channels * t, c.kernel_size, c.stride, c.padding, c.dilation,
                      c.groups if shared_input else c.groups * t, bias=True, padding_mode=c.padding_mode)
    fused = fused.to(device=c.weight.device, dtype=c.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat(weights))
        fused.bias.copy_(torch.cat(biases))
    fused.requires_grad_(False)
    return fused


class _Affine(nn.Module):
    """A lone eval-mode BatchNorm of every task: ``x · scale + shift`` per channel."""

    def __init__(self, bns: Sequence[nn.BatchNorm2d]):
        super().__init__()
        scale = torch.cat([bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) for bn in bns])
        shift = torch.cat([bn.bias.detach() - bn.running_mean * (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps))
                           for bn in bns])
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def _fuse_sequential(seqs: Sequence[nn.Sequential], shared_input: bool) -> nn.Sequential:
    children = [list(s.children()) for s in seqs]
    out: list[nn.Module] = []
    i, n = 0, len(children[0])
    while i < n:
        group = [c[i] for c in children]
        nxt = [c[i + 1] for c in children] if i + 1 < n else None
        if isinstance(group[0], nn.Conv2d) and nxt is not None and isinstance(nxt[0], nn.BatchNorm2d):
            out.append(_fold(group, nxt, shared_input))
            i += 2
        else:
            out.append(_fuse(group, shared_input))
            i += 1
        shared_input = False
    return nn.Sequential(*out)


class _FusedResidual(nn.Module):
    """Bottleneck / BasicBlock of every task: ``relu(body(x) + shortcut(x))`` (eval mode, BN folded)."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        b = blocks[0]
        names = ["1", "2", "3"] if isinstance(b, Bottleneck) else ["1", "2"]
        self.convs = nn.ModuleList(_fold([getattr(x, f"conv{k}") for x in blocks], [getattr(x, f"bn{k}") for x in blocks],
                                         False) for k in names)
        self.downsample = (None if b.downsample is None else
                           _fold([x.downsample[0] for x in blocks], [x.downsample[1] for x in blocks], False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i < len(self.convs) - 1:
                out = F.relu(out, inplace=True)
        return F.relu(out + identity, inplace=True)


class _FusedInverted(nn.Module):
    """InvertedResidual of every task: ``x + conv(x)`` or ``conv(x)``."""

    def __init__(self, blocks: Sequence[InvertedResidual]):
        super().__init__()
        self.conv = _fuse_sequential([b.conv for b in blocks], False)
        self.use_res_connect = blocks[0].use_res_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _fuse(modules: Sequence[nn.Module], shared_input: bool = False) -> nn.Module:
    m = modules[0]
    if any(type(x) is not type(m) for x in modules):
        raise NotFusable("the deltas' modules differ in type")
    if isinstance(m, (Bottleneck, BasicBlock)):
        return _FusedResidual(modules)
    if isinstance(m, InvertedResidual):
        return _FusedInverted(modules)
    if isinstance(m, nn.Sequential):
        return _fuse_sequential(modules, shared_input)
    if isinstance(m, nn.Conv2d):
        return _fold(modules, None, shared_input)
    if isinstance(m, nn.BatchNorm2d):
        return _Affine(modules)
    if isinstance(m, _STATELESS):
        return m
    raise NotFusable(f"no fused form of {type(m).__name__}")


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
        self.stem = _fuse([d.stem for d in deltas], shared_input=True)
        self.stem_convs = len(deltas[0].stem)
        self.stages = nn.ModuleList(_fuse([d.stages[i] for d in deltas]) for i in range(len(deltas[0].stages)))
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
        xs = x.unsqueeze(1).expand(b, t, *x.shape[1:]) if shared else x.view(b, t, -1, h, w)
        return torch.cat([xs, pooled.view(b, t, k, h, w)], dim=2).view(b, -1, h, w)

    def forward(self, images: torch.Tensor, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x, shared = self.stem(images), self.stem_convs == 0
        for stage, pool, tap, k in zip(self.stages, self.pools, taps, self.ks):
            x, shared = stage(self._cat(x, shared, pool(tap), k)), False
        b = x.shape[0]
        mine = x.float().mean(dim=(2, 3))
        mine = mine.unsqueeze(1).expand(b, self.t, mine.shape[1]) if shared else mine.view(b, self.t, -1)
        subscribed = self.pools[-1].pooled(taps[-1]).view(b, self.t, self.ks[-1])
        features = torch.cat([mine, subscribed], dim=2).transpose(0, 1)  # (T, B, D)
        logits = torch.baddbmm(self.bias, features, self.weight)  # (T, B, C_max)
        return [logits[i, :, :c] for i, c in enumerate(self.classes)]
