"""Pruned-copy initialisation of a delta (issue 14, idea 1; as Ladder Side-Tuning starts its side network).

Each delta block starts from the weights of the source block it mirrors, restricted to a channel subset:

* every source feature space (the output of a block that changes width or resolution, and the residual
  blocks that add into it) is ranked by the |γ| of the BatchNorm that writes it; the delta's stream through
  that space carries its top-w channels (w = the delta stage's width);
* a block's hidden (expanded) channels are the top ones of the source block's by the |γ| of its
  depthwise BatchNorm;
* the channel-pooled inputs *are* source channels: each pool starts with the K source channels ranked just
  after the stream's w (its scores are permuted so, not redrawn), and the expand convolution's input
  columns for them are read off the source's;
* a k×k depthwise kernel larger than the delta's 3×3 gives its centre 3×3; BatchNorm γ and β are copied,
  running statistics start fresh (training normalises with the batch's).

Weights with no source counterpart (the delta's stem, whose one strided convolution stands for the
source's stem and first block, and the stage inputs that come from it; the classifier) keep the product's
random initialisation. Written for efficientnet_lite0 (the ``cpu`` configurations); other sources raise.
"""

from __future__ import annotations

import torch
from torch import nn

from snowhub.models.delta import Delta


def _rank(gamma: torch.Tensor) -> torch.Tensor:
    """Channel indices ``(C,)`` by |γ|, most important first."""
    return torch.argsort(gamma.detach().abs(), descending=True)


def _source_blocks(delta: Delta, source: nn.Module) -> list[list[nn.Module]]:
    """For each delta stage, the source blocks it mirrors (``_blocks.a+1 … _blocks.b`` between two taps)."""
    names = [t.name for t in delta.shape.taps]
    if not all(n.startswith("_blocks.") for n in names):
        raise ValueError(f"pruned copy needs an efficientnet_lite-style source, taps {names}")
    ends = [int(n.removeprefix("_blocks.")) for n in names]
    return [list(source._blocks[a + 1:b + 1]) for a, b in zip(ends, ends[1:])]


def _creates_space(block: nn.Module) -> bool:
    """Whether `block` writes a new feature space (no residual: width or resolution changes)."""
    args = block._block_args
    stride = args.stride if isinstance(args.stride, int) else args.stride[0]
    return not (block.id_skip and stride == 1 and args.input_filters == args.output_filters)


@torch.no_grad()
def _copy_block(dst: nn.Module, src: nn.Module, in_map: list[int | None], hidden: torch.Tensor,
                out: torch.Tensor) -> None:
    """Copy `src`'s weights into torchvision ``InvertedResidual`` `dst` on the given channel subsets.

    `in_map[j]` is the source input channel of the delta's input j, or None (keeps the random column).
    """
    expand, depthwise, project, project_bn = dst.conv
    expand_conv, expand_bn = expand[0], expand[1]
    known = [j for j, c in enumerate(in_map) if c is not None]
    rows = src._expand_conv.weight[hidden][:, [in_map[j] for j in known]]
    expand_conv.weight[:, known] = rows
    expand_bn.weight.copy_(src._bn0.weight[hidden])
    expand_bn.bias.copy_(src._bn0.bias[hidden])
    kernel = src._depthwise_conv.weight[hidden]
    trim = (kernel.shape[-1] - 3) // 2
    depthwise[0].weight.copy_(kernel[..., trim:trim + 3, trim:trim + 3])
    depthwise[1].weight.copy_(src._bn1.weight[hidden])
    depthwise[1].bias.copy_(src._bn1.bias[hidden])
    project.weight.copy_(src._project_conv.weight[out][:, hidden])
    project_bn.weight.copy_(src._bn2.weight[out])
    project_bn.bias.copy_(src._bn2.bias[out])


@torch.no_grad()
def _start_pool_at(pool: nn.Module, channels: torch.Tensor) -> None:
    """Permute `pool`'s initial scores so its deterministic top-K is `channels` (K,)."""
    ordered = pool.scores.sort(descending=True).values
    rest = [c for c in range(pool.channels) if c not in set(channels.tolist())]
    pool.scores[torch.cat([channels, torch.tensor(rest, dtype=torch.long)])] = ordered


@torch.no_grad()
def apply_pruned_copy(delta: Delta, source: nn.Module) -> None:
    """Initialise `delta`'s stages from `source` (an efficientnet_lite network) as described above.

    Raises:
        ValueError: the source is not efficientnet_lite-style or a delta stage is wider than the source's.
    """
    shape = delta.shape
    # The stream entering stage 1 comes from the delta's stem: no source channel corresponds to it.
    stream: list[int | None] = [None] * shape.widths[0]
    for i, (stage, blocks) in enumerate(zip(delta.stages, _source_blocks(delta, source)), start=1):
        space_rank = None
        for j, (dst, src) in enumerate(zip(stage, blocks)):
            if j == 0:
                tap_rank, k = _tap_rank(source, shape.taps[i - 1].name), shape.ks[i - 1]
                # The stream already carries the tap's top w channels (except after the stem): the pool
                # starts on the next K, or on the top K where the stream carries none or too few remain.
                skip = 0 if None in stream or len(tap_rank) < len(stream) + k else len(stream)
                pooled = tap_rank[skip:skip + k]
                _start_pool_at(delta.pools[i - 1], pooled)
                in_map = stream + sorted(pooled.tolist())  # a pool's first placement is by channel index
            else:
                in_map = stream
            if space_rank is None or _creates_space(src):
                space_rank = _rank(src._bn2.weight)
            width, hidden_width = dst.conv[2].out_channels, dst.conv[2].in_channels
            if width > len(space_rank) or hidden_width > src._bn1.weight.numel():
                raise ValueError(f"delta stage {i} is wider than the source block it mirrors")
            out = space_rank[:width]
            _copy_block(dst, src, in_map, _rank(src._bn1.weight)[:hidden_width], out)
            stream = out.tolist()


def _tap_rank(source: nn.Module, tap: str) -> torch.Tensor:
    """Channels of source tap `tap` (``_blocks.n``) ranked by the |γ| of the BatchNorm that wrote its space."""
    blocks = list(source._blocks[:int(tap.removeprefix("_blocks.")) + 1])
    creator = next(b for b in reversed(blocks) if _creates_space(b))
    return _rank(creator._bn2.weight)
