"""The delta: a task's own small network, the source's architecture narrowed (SNOW, section 2.1).

The delta mirrors the source stage by stage: one stage per tap, as many blocks as the source stage, each
``width_divisor`` times narrower, built from the source's block family (:mod:`snowhub.models.blocks`:
torchvision's ``Bottleneck``, ``BasicBlock`` or ``InvertedResidual``; ``BasicBlock`` for every other
architecture). Its stride from one stage to the next is the ratio of the taps' reductions: for a vision
transformer, whose taps all have the patch stride, a stem down to that stride and then stages at stride 1.
Stage i consumes ``concat(previous delta output, channel-pooled
source tap i-1)``, both at the same resolution; the classifier consumes ``concat(last delta stage,
channel-pooled last tap)``. Layout and rationale: ``docs/architecture.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from snowhub.models.blocks import get_family
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.sources import Tap

MIN_WIDTH = 8


@dataclass(frozen=True)
class DeltaShape:
    """The sizes a delta is built from; recorded with the task so the delta can be rebuilt for serving.

    Attributes:
        block: block family (:mod:`snowhub.models.blocks`: ``"bottleneck"``, ``"basic"``, ``"inverted_residual"``).
        taps: the source's taps (channels N_i, stride, blocks).
        widths: output channels of each delta stage (stem first), ``len(taps)`` entries.
        ks: K_i, channels subscribed from each tap.
        num_classes: classes of the task.
        noise_var: σ² of the channel pooling noise.
    """

    block: str
    taps: tuple[Tap, ...]
    widths: tuple[int, ...]
    ks: tuple[int, ...]
    num_classes: int
    noise_var: float

    @staticmethod
    def from_ratios(block: str, taps: Sequence[Tap], width_divisor: float, k_ratio: float,
                    num_classes: int, noise_var: float = 1e-3, head_k_ratio: float = 1.0) -> "DeltaShape":
        """Widths N_i / `width_divisor` (at least 8, a multiple of 4) and K_i = round(N_i · `k_ratio`),
        except the last tap, which feeds only the classifier: K = round(N · `head_k_ratio`).

        The paper uses K = N/8 everywhere (``head_k_ratio=1/8``). Subscribing the classifier to the whole
        last tap costs N × classes weights and no convolution, and gained 6 points of top-1 over three
        seeds on Fashion-MNIST (docs/benchmarks.md); the top-K of K = N/8 there never settled.
        """
        widths = tuple(max(MIN_WIDTH, 4 * math.ceil(t.channels / width_divisor / 4)) for t in taps)
        ratios = [k_ratio] * (len(taps) - 1) + [head_k_ratio]
        ks = tuple(min(t.channels, max(1, round(t.channels * r))) for t, r in zip(taps, ratios))
        return DeltaShape(block, tuple(taps), widths, ks, num_classes, noise_var)

    def to_dict(self) -> dict:
        return {"block": self.block, "taps": [t.to_dict() for t in self.taps], "widths": list(self.widths),
                "ks": list(self.ks), "num_classes": self.num_classes, "noise_var": self.noise_var}

    @staticmethod
    def from_dict(d: dict) -> "DeltaShape":
        return DeltaShape(d["block"], tuple(Tap.from_dict(t) for t in d["taps"]), tuple(d["widths"]),
                          tuple(d["ks"]), int(d["num_classes"]), float(d["noise_var"]))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _stem(stride: int, width: int) -> nn.Sequential:
    """Images down to the first tap's resolution: log2(stride) conv-BN-ReLU of stride 2 (3×3, padding 1), or
    for a stride that is no power of two (a patch-14 ViT) one ``stride × stride`` patchify conv-BN-ReLU."""
    if stride & (stride - 1) == 0:
        return nn.Sequential(*[_conv_bn_relu(3 if i == 0 else width, width, 2) for i in range(int(math.log2(stride)))])
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, width, stride, stride, bias=False), nn.BatchNorm2d(width),
                                       nn.ReLU(inplace=True)))


def match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` ``(B, C, h, w)`` average-pooled to `like`'s ``(h', w')`` when they differ (an image size whose
    rounding the source and the delta do differently, e.g. ConvNeXt's 2×2 downsampling of an odd map); the
    same tensor otherwise, so every size that already matched computes exactly as before."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return nn.functional.adaptive_avg_pool2d(x, like.shape[-2:])


class Delta(nn.Module):
    """A task's delta network with its channel pooling layers.

    Args:
        shape: the :class:`DeltaShape` to build.

    Forward:
        images: normalised float images ``(B, 3, H, W)`` (the same tensor the source sees).
        taps: the source's tap tensors, ``taps[i]`` of shape ``(B, N_i, H/s_i, W/s_i)``.
        returns logits ``(B, num_classes)``.
    """

    def __init__(self, shape: DeltaShape):
        super().__init__()
        family = get_family(shape.block)  # ValueError: a family this snowhub does not know
        self.shape = shape
        taps, widths, ks = shape.taps, shape.widths, shape.ks
        self.pools = nn.ModuleList(ChannelPooling(t.channels, k, shape.noise_var) for t, k in zip(taps, ks))
        self.stem = _stem(taps[0].stride, widths[0])
        self.stages = nn.ModuleList(
            family.stage(widths[i - 1] + ks[i - 1], widths[i], taps[i].stride // taps[i - 1].stride, taps[i].blocks)
            for i in range(1, len(taps))
        )
        self.classifier = nn.Linear(widths[-1] + ks[-1], shape.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision initialises inside its model classes, not its blocks; do the same for the delta.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.stem(images)
        for stage, pool, tap in zip(self.stages, self.pools, taps):
            pooled = pool(tap)
            x = stage(torch.cat([match_size(x, pooled), pooled], dim=1))
        last = self.pools[-1](taps[-1])
        x = torch.cat([match_size(x, last), last], dim=1)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def freeze_channel_pooling(self) -> dict[str, list[int]]:
        """Fix every channel pooling layer's deterministic top-K; returns tap name → indices in slot order."""
        return {tap.name: pool.freeze().tolist() for tap, pool in zip(self.shape.taps, self.pools)}

    def parameter_counts(self) -> tuple[int, int]:
        """(delta parameters excluding channel pooling scores, channel pooling scores)."""
        cp = sum(p.numel() for p in self.pools.parameters())
        return sum(p.numel() for p in self.parameters()) - cp, cp

    def serving_parameter_count(self) -> int:
        """Parameters needed at inference: the delta plus the K selected scores per tap."""
        delta, _ = self.parameter_counts()
        return delta + sum(self.shape.ks)
