"""The exported graph: the source once, then every chosen task's delta on its taps, as one ``nn.Module``.

It is the serving network (:class:`snowhub.models.network.MultiTaskNetwork`, SNOW section 3.2) with a
fixed output order, so an exporter sees uint8 images in and a tuple of logits out. Normalisation is inside
(the source's ``InputNormalizer``); channel pooling runs with its frozen indices (an ``index_select``, a
Gather in ONNX), never the training-time noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from snowhub.errors import ConfigError
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import MultiTaskNetwork


def output_name(task: str) -> str:
    """The graph output of `task`: ``logits_<task>``."""
    return f"logits_{task}"


class ExportNetwork(nn.Module):
    """Source + chosen deltas with a fixed output order.

    Args:
        source: the frozen source (eval mode).
        deltas: task name → delta, each with frozen channel pooling (as registered).
        source_task: the name under which the source's own head is exported, or None to leave it out.

    Forward:
        images: uint8 ``(B, 3, H, W)``. Returns a tuple of float32 logits ``(B, classes)``, one per task in
        :attr:`tasks` order (the source's head first when included).

    Raises:
        ConfigError: a delta's channel pooling is not frozen (it would select channels with noise).
    """

    def __init__(self, source: FrozenSource, deltas: Mapping[str, Delta], source_task: str | None):
        super().__init__()
        for name, delta in deltas.items():
            if not all(pool.frozen for pool in delta.pools):
                raise ConfigError(f"task {name!r} has channel pooling that is not frozen; only registered "
                                  "deltas can be exported")
        self.network = MultiTaskNetwork(source, deltas, source_task)
        head = [source_task] if source_task is not None and source.has_head else []
        self.tasks: list[str] = head + list(deltas)
        self.eval()

    @property
    def output_names(self) -> list[str]:
        return [output_name(t) for t in self.tasks]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(images)
        return tuple(out[t].float() for t in self.tasks)


def check_one_size(sizes: Mapping[str, int], image_size: int | None) -> int:
    """The one image size (px) every task of the graph runs at.

    Args:
        sizes: task name → the size it was trained (and is served) at.
        image_size: the size asked for, or None to use the tasks' own.

    Raises:
        ConfigError: the tasks were trained at different sizes and no `image_size` was given.
    """
    if image_size is not None:
        if image_size < 8:
            raise ConfigError(f"`image_size` must be at least 8 px, got {image_size}")
        return int(image_size)
    distinct = sorted(set(sizes.values()))
    if len(distinct) != 1:
        groups = "; ".join(f"{', '.join(t for t, s in sizes.items() if s == size)} at {size} px" for size in distinct)
        raise ConfigError(f"one graph has one input size, but these tasks are served at different sizes ({groups}): "
                          "export each size separately, or give `image_size` to run them all at that size")
    return distinct[0]

