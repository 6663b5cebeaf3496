"""Fusion primitives of horizontal fusion (:mod:`snowhub.models.fused`): T tasks' convolutions as one grouped
convolution with the eval BatchNorm folded in, lone BatchNorms as one affine map, Sequentials of those.

The block families (:mod:`snowhub.models.blocks`) build their fused blocks from these; a module with no
fused form raises :class:`NotFusable` and the deltas are then served one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

STATELESS = (nn.ReLU, nn.ReLU6, nn.Identity, nn.SiLU, nn.Hardswish)


class NotFusable(ValueError):
    """The deltas cannot be fused (another layout, a module type this file does not know, or training)."""


def fold(convs: Sequence[nn.Conv2d], bns: Sequence[nn.BatchNorm2d] | None, shared_input: bool) -> nn.Conv2d:
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


class Affine(nn.Module):
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


def fuse_sequential(seqs: Sequence[nn.Sequential], shared_input: bool) -> nn.Sequential:
    """T Sequentials of one layout as one: each Conv2d + BatchNorm pair folded, every other child fused.

    `shared_input`: the first module reads the images every task shares ``(B, 3, H, W)``, not the task-major
    ``(B, T·C, H, W)``. Raises NotFusable for a child with no fused form."""
    children = [list(s.children()) for s in seqs]
    out: list[nn.Module] = []
    i, n = 0, len(children[0])
    while i < n:
        group = [c[i] for c in children]
        nxt = [c[i + 1] for c in children] if i + 1 < n else None
        if isinstance(group[0], nn.Conv2d) and nxt is not None and isinstance(nxt[0], nn.BatchNorm2d):
            out.append(fold(group, nxt, shared_input))
            i += 2
        else:
            out.append(fuse(group, shared_input))
            i += 1
        shared_input = False
    return nn.Sequential(*out)


def fuse(modules: Sequence[nn.Module], shared_input: bool = False) -> nn.Module:
    """T modules of one type (Sequential, Conv2d, BatchNorm2d or a stateless activation) as one on the
    task-major layout. Raises NotFusable for any other type or when the types differ."""
    m = modules[0]
    if any(type(x) is not type(m) for x in modules):
        raise NotFusable("the deltas' modules differ in type")
    if isinstance(m, nn.Sequential):
        return fuse_sequential(modules, shared_input)
    if isinstance(m, nn.Conv2d):
        return fold(modules, None, shared_input)
    if isinstance(m, nn.BatchNorm2d):
        return Affine(modules)
    if isinstance(m, STATELESS):
        return m
    raise NotFusable(f"no fused form of {type(m).__name__}")


