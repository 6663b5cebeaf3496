"""The block families a delta is built from, and how each is fused for serving.

The delta mirrors its source stage by stage (SNOW, section 2.1) in the source's own block family, narrowed:
torchvision's ``Bottleneck``, ``BasicBlock`` or ``InvertedResidual``. A source's family is chosen by
dispatchers over the class names of its modules, in the style of PEFT's dispatcher list: the first family
whose source block types appear wins, and every other architecture (ConvNeXt, a ViT, GhostNet, …) gets
:data:`DEFAULT_FAMILY`. A new family is one :func:`register_family` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from snowhub.models._fusion import NotFusable, fold, fuse_sequential


@dataclass(frozen=True)
class BlockFamily:
    """One family of residual blocks.

    Attributes:
        name: recorded in each task's ``delta_shape`` (``"bottleneck"``, ``"basic"``, ``"inverted_residual"``).
        source_blocks: class names of source modules that select this family (the dispatcher).
        make_block: ``(cin, cout, stride) → block`` taking ``(B, cin, H, W)`` to ``(B, cout, H/stride, W/stride)``.
        fuse_block: T blocks of this family (eval mode) → one module on the task-major layout
            (:mod:`snowhub.models.fused`); raises NotFusable when it cannot.
    """

    name: str
    source_blocks: frozenset[str]
    make_block: Callable[[int, int, int], nn.Module]
    fuse_block: Callable[[Sequence[nn.Module]], nn.Module]

    def stage(self, cin: int, cout: int, stride: int, blocks: int) -> nn.Sequential:
        """`blocks` blocks; the first changes width ``cin → cout`` and resolution (``stride``)."""
        return nn.Sequential(*(self.make_block(cin, cout, stride) if i == 0 else self.make_block(cout, cout, 1)
                               for i in range(blocks)))

    def fuse_stage(self, stages: Sequence[nn.Sequential]) -> nn.Sequential:
        """T stages of one shape as one (block by block). Raises NotFusable."""
        if len({len(s) for s in stages}) != 1:
            raise NotFusable("the stages differ in depth")
        return nn.Sequential(*(self.fuse_block([s[j] for s in stages]) for j in range(len(stages[0]))))


def _residual(cls: type, expansion: int) -> Callable[[int, int, int], nn.Module]:
    def make(cin: int, cout: int, stride: int) -> nn.Module:
        downsample = None
        if stride != 1 or cin != cout:
            downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return cls(cin, cout // expansion, stride, downsample)
    return make


class _FusedResidual(nn.Module):
    """Bottleneck / BasicBlock of every task: ``relu(body(x) + shortcut(x))`` (eval mode, BN folded)."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        if any(type(x) is not type(blocks[0]) for x in blocks):
            raise NotFusable("the deltas' blocks differ in type")
        b = blocks[0]
        names = ["1", "2", "3"] if isinstance(b, Bottleneck) else ["1", "2"]
        self.convs = nn.ModuleList(fold([getattr(x, f"conv{k}") for x in blocks], [getattr(x, f"bn{k}") for x in blocks],
                                        False) for k in names)
        self.downsample = (None if b.downsample is None else
                           fold([x.downsample[0] for x in blocks], [x.downsample[1] for x in blocks], False))

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

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        if any(not isinstance(x, InvertedResidual) for x in blocks):
            raise NotFusable("the deltas' blocks differ in type")
        self.conv = fuse_sequential([b.conv for b in blocks], False)
        self.use_res_connect = blocks[0].use_res_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


FAMILIES: dict[str, BlockFamily] = {}
# Dispatch order: the first family whose source block types appear in the source wins.
_DISPATCH: list[str] = []
DEFAULT_FAMILY = "basic"


def register_family(family: BlockFamily) -> BlockFamily:
    """Add `family` to the registry and, after those before it, to the dispatch order."""
    FAMILIES[family.name] = family
    if family.name not in _DISPATCH:
        _DISPATCH.append(family.name)
    return family


register_family(BlockFamily("bottleneck", frozenset({"Bottleneck"}), _residual(Bottleneck, 4), _FusedResidual))
register_family(BlockFamily("basic", frozenset({"BasicBlock"}), _residual(BasicBlock, 1), _FusedResidual))
register_family(BlockFamily(
    "inverted_residual",
    frozenset({"InvertedResidual", "DepthwiseSeparableConv", "UniversalInvertedResidual", "MBConv", "FusedMBConv",
               "EdgeResidual"}),
    lambda cin, cout, stride: InvertedResidual(cin, cout, stride, expand_ratio=6), _FusedInverted))


def get_family(name: str) -> BlockFamily:
    """The family called `name`. Raises ValueError: unknown family (a delta_shape this snowhub cannot build)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown block family {name!r}") from None


def dispatch_family(modules: Iterable[nn.Module]) -> str:
    """The family of a source made of `modules`: the first registered family one of whose source block types
    is among the modules' class names, else :data:`DEFAULT_FAMILY` (ConvNeXt, ViT, GhostNet, RegNet-Y, …)."""
    names = {type(m).__name__ for m in modules}
    return next((f for f in _DISPATCH if FAMILIES[f].source_blocks & names), DEFAULT_FAMILY)
