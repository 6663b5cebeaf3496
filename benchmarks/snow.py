"""SNOW as benchmarked: the product's FrozenSource + Delta, with the subscription alternatives of the
paper's Table 5 plugged into ``Delta.pools``.

* ``channel_pooling``: the product's :class:`ChannelPooling` (top-K of N, one score per channel).
* ``conv1x1``: an N→K 1×1 convolution (N·K parameters), as in progressive nets' adapters.
* ``attention``: CBAM channel attention (Woo et al., 2018) over all N channels; the delta then reads all N.
* ``all``: subscribing to every channel: channel pooling with K = N (the scores only scale).

Every alternative standardises the source map with the same calibrated per-channel statistics as channel
pooling (``calibrate``), so only the subscription itself differs.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.configs import SnowVariant
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.models.sources import SourceSpec


class _Standardised(nn.Module):
    """Per-channel standardisation with fixed source statistics (set by ``calibrate``), as in channel pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("inv_std", torch.ones(channels))

    @torch.no_grad()
    def calibrate(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(1e-5))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) * self.inv_std.view(1, -1, 1, 1)

    def freeze(self) -> None:
        """Nothing to fix for serving (kept for ``Delta.freeze_channel_pooling``)."""


class ConvSubscription(_Standardised):
    """N→K 1×1 convolution over the standardised source map: ``(B, N, h, w)`` → ``(B, K, h, w)``."""

    def __init__(self, channels: int, k: int):
        super().__init__(channels)
        self.conv = nn.Conv2d(channels, k, 1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.standardise(x))


class ChannelAttention(_Standardised):
    """CBAM channel attention: ``x · sigmoid(MLP(avgpool x) + MLP(maxpool x))``, all N channels kept.

    The shared MLP is N → max(1, N // reduction) → N (1×1 convolutions), about 2N²/reduction parameters.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(channels)
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardise(x)
        att = self.mlp(z.mean(dim=(2, 3), keepdim=True)) + self.mlp(z.amax(dim=(2, 3), keepdim=True))
        return z * torch.sigmoid(att)


def delta_shape(spec: SourceSpec, num_classes: int, variant: SnowVariant, noise_var: float) -> DeltaShape:
    """The delta's sizes for `variant`: the product's shape, with K = N where the subscription keeps every channel."""
    # head_k_ratio only when asked for: products before it (`--product` an older revision) lack the argument.
    head = {} if variant.head_k_ratio == 1.0 else {"head_k_ratio": variant.head_k_ratio}
    shape = DeltaShape.from_ratios(spec.block, spec.taps, variant.width_divisor, variant.k_ratio, num_classes,
                                   noise_var, **head)
    if variant.subscription in ("attention", "all"):
        shape = DeltaShape(shape.block, shape.taps, shape.widths, tuple(t.channels for t in spec.taps),
                           num_classes, noise_var)
    return shape


def build_delta(spec: SourceSpec, num_classes: int, variant: SnowVariant, noise_var: float,
                attention_reduction: int = 16) -> Delta:
    """The product's Delta with the subscription modules of `variant` in ``delta.pools``."""
    delta = Delta(delta_shape(spec, num_classes, variant, noise_var))
    if variant.subscription in ("channel_pooling", "all"):
        return delta  # the product's ChannelPooling (with K = N for "all")
    taps, ks = delta.shape.taps, delta.shape.ks
    if variant.subscription == "conv1x1":
        pools = [ConvSubscription(t.channels, k) for t, k in zip(taps, ks)]
    elif variant.subscription == "attention":
        pools = [ChannelAttention(t.channels, attention_reduction) for t in taps]
    else:
        raise ValueError(f"unknown subscription {variant.subscription!r}")
    delta.pools = nn.ModuleList(pools)
    return delta


def subscription_parameters(delta: Delta) -> int:
    """Parameters of the subscription modules alone (paper Table 5's "parameter overhead")."""
    return sum(p.numel() for p in delta.pools.parameters())


class SnowModel(nn.Module):
    """Source + one delta, uint8 images in, logits out: in training the product's training forward, else
    ``task_logits``.

    With `batch_size` and `image_size` (the ``speed`` jobs) the training forward is the one ``add-task`` would
    run: ``--low-memory`` as `low_memory` says (``auto`` resolved by the product for this batch and size) and
    the source in `source_precision`; the resolved choice is ``self.low_memory``. With low memory on, as in
    ``add-task``, evaluation and calibration run the source ``self.eval_chunk`` images at a time and, on the
    CPU, malloc returns freed blocks to the OS (``snowhub.malloc``). Otherwise (and for a
    `source_chunk`, a research setting) ``snowhub.models.staged.StagedForward`` with its own defaults, where
    the measured product has it.
    """

    def __init__(self, source: FrozenSource, delta: Delta, source_precision: str = "float32", source_chunk: int = 0,
                 low_memory: str = "auto", batch_size: int | None = None, image_size: int | None = None):
        super().__init__()
        self.source, self.delta, self.low_memory = source, delta, None
        self._staged = self._eval = None
        self.eval_chunk: int | None = None
        if batch_size and image_size and not source_chunk and _product_forward(self, source_precision, low_memory,
                                                                               batch_size, image_size):
            return
        try:
            from snowhub.models.staged import StagedForward
        except ImportError:  # a --product revision from before it
            if source_precision != "float32":
                raise
            return
        dtype = getattr(torch, source_precision) if source_precision != "float32" else None
        # source_chunk only when asked for: products before it lack the argument.
        self._staged = StagedForward(source, delta, dtype, **({"source_chunk": source_chunk} if source_chunk else {}))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self._staged is not None and torch.is_grad_enabled():
            return self._staged(images)
        if self._eval is not None:
            return self._eval(images)
        return task_logits(self.source, self.delta, images)


def _product_forward(model: SnowModel, source_precision: str, low_memory: str, batch_size: int,
                     image_size: int) -> bool:
    """Give `model` the training forward ``add-task`` runs at this batch and size (False: a product from
    before ``--low-memory auto``)."""
    try:
        from snowhub.training.config import RunOptions, TrainConfig
        from snowhub.training.forwards import choose_low_memory, live_forward, source_dtype
    except ImportError:
        return False
    config = TrainConfig(batch_size=batch_size, image_size=image_size, source_precision=source_precision,
                         run=RunOptions(low_memory=low_memory))
    choice = choose_low_memory(config, model.source, image_size, True)
    dtype = source_dtype(source_precision, next(model.delta.parameters()).device)
    model._staged = live_forward(model.source, model.delta, model.delta, dtype, choice.on)
    if choice.on:
        choice = _low_memory_outside_steps(model, choice)
    model.low_memory = choice.to_dict()
    return True


def _low_memory_outside_steps(model: SnowModel, choice):
    """What ``add-task`` does beside the staged forward when low memory is on (products that have it): the
    source's evaluation and calibration passes in chunks, and on the CPU freed blocks returned to the OS."""
    try:
        from snowhub.training.forwards import eval_forward, outside_the_steps
    except ImportError:
        return choice
    choice, model.eval_chunk = outside_the_steps(choice, next(model.delta.parameters()).device)
    model._eval = eval_forward(model.source, model.delta, model.eval_chunk)
    return choice
