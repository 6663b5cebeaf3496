"""Writing one ONNX graph and proving it: exported with ``torch.onnx.export(dynamo=True)``, then run by ONNX
Runtime (CPU provider) on real images at two batch sizes and compared with PyTorch before it is kept.

The exporter is torch.export's (dynamo, non-strict): it traces the forward pass with a symbolic batch and
concrete height and width, so EfficientNet-Lite's data-dependent TF "same" padding (computed from the input
size in Python) becomes constants of the traced size while the batch axis stays dynamic. The image size is
therefore fixed per file (the tasks' own, or the ``image_size`` asked for); see ``docs/export.md``.

Everything is written into a temporary directory beside the output and renamed into place at the end: a
failed export or verification leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from snowhub.export.errors import ExportError
from snowhub.export.graph import ExportNetwork
from snowhub.store.files import atomic_write

MODEL_FILE = "model.onnx"
INPUT_NAME = "images"
RTOL, ATOL = 1e-3, 1e-5  # ONNX Runtime vs PyTorch, per logit: |ort - torch| <= ATOL + RTOL * |torch|
LARGE_BATCH = 16


@dataclass
class Verification:
    """What ONNX Runtime answered against PyTorch on the same uint8 images.

    Attributes:
        batches: the batch sizes run (1 and a larger one).
        images: distinct images compared.
        max_abs_diff: largest |ONNX Runtime − PyTorch| over every logit of every task and batch.
        top1_agree: every image's top-1 was the same in both, for every task.
    """

    batches: tuple[int, ...]
    images: int
    max_abs_diff: float
    top1_agree: bool

    def to_dict(self) -> dict:
        return {"batches": list(self.batches), "images": self.images, "max_abs_diff": self.max_abs_diff,
                "top1_agree": self.top1_agree, "rtol": RTOL, "atol": ATOL}


def export_graph(network: nn.Module, example: torch.Tensor | tuple, opset: int, path: Path) -> None:
    """Export `network` to ONNX at `path`, weights inside the file, every input with a dynamic batch axis
    (the other axes those of the example).

    Args:
        network: an :class:`ExportNetwork` (input ``images`` uint8 ``(batch, 3, H, W)``), or any module with
            ``input_names`` and ``output_names`` (the per-artifact graphs of
            :mod:`snowhub.export.artifact_graphs`).
        example: the one input tensor, or the tuple of `network`'s forward arguments (lists of tensors allowed).

    Raises:
        ExportError: the exporter failed (its first line is in the message).
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    args = example if isinstance(example, tuple) else (example,)
    dynamic = tuple([{0: batch}] * len(a) if isinstance(a, list) else {0: batch} for a in args)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(network, args, dynamo=True, verbose=False,
                                        input_names=getattr(network, "input_names", [INPUT_NAME]),
                                        output_names=network.output_names, dynamic_shapes=dynamic,
                                        opset_version=opset, external_data=False)
            program.save(str(path), external_data=False)
    except ExportError:
        raise
    except Exception as exc:  # the exporter's own errors are many kinds; say which and stop
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"torch.onnx.export (dynamo) failed at opset {opset}: {first}; try another `opset` "
                          "or `image_size`") from None


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def within_tolerance(got: np.ndarray, want: np.ndarray) -> bool:
    """Whether logits `got` ``(B, classes)`` equal `want` within the export tolerance: every logit within
    ``ATOL + RTOL ×`` its image's largest |logit| in `want` (a float32 logit's error follows the size of the sums
    behind it, which a logit near 0 shares with the other logits of its image)."""
    if got.shape != want.shape:
        return False
    return bool((np.abs(got - want) <= ATOL + RTOL * np.abs(want).max(axis=1, keepdims=True)).all())


@torch.no_grad()
def verify_graph(path: Path, network: ExportNetwork, images: torch.Tensor,
                 large_batch: int = LARGE_BATCH) -> Verification:
    """Run `path` in ONNX Runtime (CPU) and `network` in PyTorch on uint8 `images` ``(P, 3, S, S)``: up to 8
    images one at a time, then one batch of `large_batch` (images repeated round-robin when fewer).

    Raises:
        ExportError: a logit is not :func:`within_tolerance` or a top-1 differs (the message
            names the task, the batch size and the largest difference).
    """
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    if names != network.output_names:
        raise ExportError(f"the exported graph has outputs {names}, expected {network.output_names}")
    large = images[torch.arange(large_batch) % len(images)].contiguous()
    runs = [images[i:i + 1] for i in range(min(8, len(images)))] + [large]
    worst = 0.0
    for batch in runs:
        expected = network(batch)
        got = session.run(None, {INPUT_NAME: batch.numpy()})
        for task, want, have in zip(network.tasks, expected, got):
            want = want.numpy()
            diff = float(np.abs(have - want).max())
            worst = max(worst, diff)
            if not within_tolerance(have, want):
                raise ExportError(f"ONNX Runtime disagrees with PyTorch on task {task!r} at batch {len(batch)} "
                                  f"(max |diff| {diff:.3g} > atol {ATOL} + rtol {RTOL}·largest |logit|); nothing was "
                                  "written")
            if not np.array_equal(have.argmax(1), want.argmax(1)):
                raise ExportError(f"ONNX Runtime gives another top-1 than PyTorch on task {task!r} at batch "
                                  f"{len(batch)}; nothing was written")
    return Verification((1, large_batch), len(images), worst, True)


def _example_batch(images: torch.Tensor) -> torch.Tensor:
    """Two images to export from: with a batch of one, torch.export specialises the batch dimension of
    models such as ConvNeXt to 1 and then refuses the dynamic batch ("Constraints violated (batch)")."""
    return images[torch.arange(2) % len(images)].contiguous()


def write_export_dir(output: Path, network: ExportNetwork, images: torch.Tensor, opset: int,
                     extras: Callable[[Verification], Mapping[str, str]]) -> Verification:
    """Write ``model.onnx`` (verified, see :func:`verify_graph`) and the text files ``extras(verification)``
    returns (file name → content) into the new directory `output`, with
    :func:`~snowhub.store.files.atomic_write`.

    `output` must not exist, or be an empty directory. Raises ExportError (nothing is left behind).
    """
    output = Path(output).expanduser().absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} already exists and is not an empty directory; choose a new `output` directory")
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent} does not exist; create it first or choose another `output`")
    try:
        with atomic_write(output, directory=True) as tmp:
            export_graph(network, _example_batch(images), opset, tmp / MODEL_FILE)
            verification = verify_graph(tmp / MODEL_FILE, network, images)
            for name, text in extras(verification).items():
                (tmp / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {output} ({exc.strerror or exc}); free some space or choose another "
                          "`output`") from None
    return verification
