"""One ONNX graph per artifact: the source (images → taps, per image size) and each task's delta (taps → logits).

:mod:`snowhub.export.graph` exports a chosen task set as one graph; a server whose tasks come and go needs
the pieces instead, so that adding a task costs one small export and SNOW's single source pass (section 3.2)
survives: ONNX Runtime runs the source graph once per batch and feeds its outputs to every delta graph.

* **Source graph**: input ``images`` uint8 ``(batch, 3, S, S)``; outputs ``x`` (the normalised images,
  float32 ``(batch, 3, S, S)``, which every delta's stem reads), ``tap_0`` … ``tap_{n-1}`` (float32
  ``(batch, N_i, S/s_i, S/s_i)``, the source's taps) and, when asked, ``logits`` (the source's own head,
  ``(batch, 1000)``).
* **Delta graph**: inputs ``x`` and ``tap_0`` … ``tap_{n-1}`` as above; output ``logits`` float32
  ``(batch, classes)``. Channel pooling is a ``Gather`` with the indices frozen at registration.

Both are written with :func:`snowhub.export.onnx_file.export_graph` (dynamo, symbolic batch, concrete S).
The exporter runs on deep copies: tracing may swap a module's parameters for a while, and the originals are
being served from other threads.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from snowhub.errors import ConfigError
from snowhub.export.onnx_file import INPUT_NAME, export_graph
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource

NORMALISED = "x"
LOGITS = "logits"
DEFAULT_OPSET = 18


def tap_names(count: int) -> list[str]:
    """The graph names of a source's `count` taps: ``tap_0`` … ``tap_{count-1}``."""
    return [f"tap_{i}" for i in range(count)]


class SourceGraph(nn.Module):
    """The frozen source as an exportable module (see the module docstring for inputs and outputs).

    Args:
        source: the frozen source (eval mode). head: also output the source's own head as ``logits``.

    Raises:
        ConfigError: `head` for a source without a head of its own.
    """

    def __init__(self, source: FrozenSource, head: bool):
        super().__init__()
        if head and not source.has_head:
            raise ConfigError(f"the source {source.spec.name} has no head of its own")
        self.source = source
        self.head = head
        self.input_names = [INPUT_NAME]
        self.output_names = [NORMALISED, *tap_names(len(source.taps))] + ([LOGITS] if head else [])
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.source.normalizer(images)
        taps, logits = self.source(x)
        return (x, *taps, logits.float()) if self.head else (x, *taps)


class DeltaGraph(nn.Module):
    """A registered delta as an exportable module: ``(x, [tap_0, …])`` → logits ``(batch, classes)``.

    Raises:
        ConfigError: its channel pooling is not frozen (only registered deltas are exported).
    """

    def __init__(self, delta: Delta):
        super().__init__()
        if not all(pool.frozen for pool in delta.pools):
            raise ConfigError("only a registered delta (channel pooling frozen) can be exported")
        self.delta = delta
        self.input_names = [NORMALISED, *tap_names(len(delta.pools))]
        self.output_names = [LOGITS]
        self.eval()

    def forward(self, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        return self.delta(x, taps).float()


def _example(size: int, batch: int = 2) -> torch.Tensor:
    # Two images: with one, torch.export specialises some models' batch dimension to 1 (see onnx_file).
    return torch.zeros(batch, 3, size, size, dtype=torch.uint8)


@torch.no_grad()
def export_source_graph(source: FrozenSource, image_size: int, head: bool, path: Path,
                        opset: int = DEFAULT_OPSET) -> None:
    """Write the source graph of `source` at `image_size` px (square) to `path` (see the module docstring).

    Raises:
        ConfigError: `head` for a source without one. ExportError: the exporter failed.
    """
    graph = SourceGraph(copy.deepcopy(source), head)
    export_graph(graph, _example(image_size), opset, Path(path))


@torch.no_grad()
def export_delta_graph(delta: Delta, source: FrozenSource, image_size: int, path: Path,
                       opset: int = DEFAULT_OPSET) -> None:
    """Write the delta graph of `delta` for taps of `source` at `image_size` px to `path`.

    The example taps come from one pass of `source` over a blank image, so the graph's tap shapes are the
    ones the source graph at this size outputs.

    Raises:
        ConfigError: channel pooling not frozen. ExportError: the exporter failed.
    """
    x = source.normalizer(_example(image_size))
    taps, _ = source(x)
    export_graph(DeltaGraph(copy.deepcopy(delta)), (x, [t.contiguous() for t in taps]), opset, Path(path))
