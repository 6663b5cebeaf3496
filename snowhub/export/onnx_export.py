"""``snowhub export onnx``: chosen tasks of a hub as one verified ONNX graph, with labels, preprocessing, card.

Output directory::

    model.onnx           input ``images`` uint8 (batch, 3, S, S); outputs ``logits_<task>`` (batch, classes)
    labels.json          task → class names
    preprocessing.json   size, resize, crop, mean, std (normalisation is inside the graph)
    README.md            the model card (Hugging Face front matter, tasks, training, ONNX Runtime example)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from snowhub.artifacts import Artifacts
from snowhub.errors import ConfigError
from snowhub.export import card
from snowhub.export.graph import ExportNetwork, check_one_size
from snowhub.export.onnx_file import MODEL_FILE, Verification, write_export_dir
from snowhub.names import SOURCE_TASK
from snowhub.store import TaskRecord

DEFAULT_OPSET = 18
VERIFY_IMAGES = 32  # real probe images compared, spread over the exported tasks


@dataclass
class OnnxExport:
    """A written export.

    Attributes:
        directory: where it was written. tasks: the outputs' task names, in output order.
        image_size: the graph's input size, px. opset: ONNX opset. files: file name → size in bytes.
        verification: ONNX Runtime against PyTorch (:class:`~snowhub.export.onnx_file.Verification`).
    """

    directory: Path
    tasks: list[str]
    image_size: int
    opset: int
    files: dict[str, int]
    verification: Verification

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "tasks": self.tasks, "image_size": self.image_size,
                "opset": self.opset, "files": self.files, "verification": self.verification.to_dict()}


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    scaled = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return scaled.round().clamp(0, 255).to(torch.uint8)


def _check_images(artifacts: Artifacts, records: Sequence[TaskRecord], size: int) -> torch.Tensor:
    """Up to :data:`VERIFY_IMAGES` real probe images, taken evenly from every task, at `size` px."""
    if not records:  # only the source's head: no probe set to take images from
        return torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    share = max(1, VERIFY_IMAGES // len(records))
    return torch.cat([_resized(artifacts.probe(r).images[:share], size) for r in records])


def _resolved(registry, references: Sequence[str]) -> list[TaskRecord]:
    """The task row each reference names now, one per task name (ConfigError for two versions of one task)."""
    records: dict[str, TaskRecord] = {}
    for reference in references:
        record = registry.resolve(reference)
        other = records.setdefault(record.name, record)
        if other.version != record.version:
            raise ConfigError(f"{other.reference} and {record.reference} are two versions of one task; a graph has "
                              f"one output per task name (logits_{record.name}): export them one at a time")
    return list(records.values())


def export_onnx(artifacts: Artifacts, tasks: Sequence[str] | None, output: Path | str, image_size: int | None = None,
                opset: int = DEFAULT_OPSET, source_head: bool = False) -> OnnxExport:
    """Export `tasks` (None = every delta task) of the hub behind `artifacts` (on the CPU) to `output`.

    Args:
        tasks: task references (:mod:`snowhub.store.references`): ``birds`` (the version alias ``production``
            points to, else the latest not retired), ``birds@2``, ``birds@staging``; ``imagenet``
            (:data:`SOURCE_TASK`) adds the source's own head. Each output is named by its task's name
            (``logits_birds``); the card says which version it is. None = every task as its bare name
            resolves now.
        output: a new directory (or an empty one).
        image_size: the graph's input size; None = the tasks' own (they must then share one).
        opset: the ONNX opset (18 by default; the dynamo exporter supports 18 and later).
        source_head: also export the source's head as ``logits_imagenet``.

    Raises:
        TaskNotFoundError: an unknown task, version or alias, or a retired version. InvalidNameError: a
        malformed reference. ConfigError: nothing to export, two versions of one task (one output each name),
        a source without a head asked for its head, or tasks of different image sizes without `image_size`.
        IntegrityError: a stored file changed. ExportError: the exporter failed, or ONNX Runtime disagreed with PyTorch (nothing written).
    """
    if artifacts.device.type != "cpu":
        raise ConfigError("ONNX export runs on the CPU; open the hub's CPU artifacts")
    registry = artifacts.registry
    source_record = artifacts.source_record()
    names = [r.reference for r in registry.current_tasks()] if tasks is None else list(dict.fromkeys(tasks))
    head = source_head or SOURCE_TASK in names
    names = [n for n in names if n != SOURCE_TASK]
    if head and source_record.head_classes is None:
        raise ConfigError(f"the source {source_record.name} has no head of its own; export its tasks only")
    if not names and not head:
        raise ConfigError(f"the hub at {registry.layout.root} has no tasks to export yet; add one with "
                          "`snowhub add-task NAME --data DIR`")
    if opset < 18:
        raise ConfigError(f"`opset` {opset} is too old for the dynamo exporter; use 18 or later")
    records = _resolved(registry, names)
    sizes = ({SOURCE_TASK: int(source_record.preprocessing["image_size"])} if head else {}) | \
            {r.name: r.image_size for r in records}
    size = check_one_size(sizes, image_size)
    source = artifacts.source()
    network = ExportNetwork(source, {r.name: artifacts.delta(r) for r in records}, SOURCE_TASK if head else None)
    images = _check_images(artifacts, records, size)
    classes = {r.name: list(r.class_names) for r in records}
    if head:
        classes[SOURCE_TASK] = list(source_record.head_classes)

    def extras(verification: Verification) -> dict[str, str]:
        return {"labels.json": json.dumps(card.labels(network.tasks, classes), indent=1, ensure_ascii=False) + "\n",
                "preprocessing.json": json.dumps(card.preprocessing(source_record, size), indent=1) + "\n",
                "README.md": card.onnx_card(source_record, records, head, size, opset,
                                                     verification.max_abs_diff)}

    verification = write_export_dir(Path(output), network, images, opset, extras)
    directory = Path(output).expanduser().absolute()
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir())}
    assert MODEL_FILE in files
    return OnnxExport(directory, network.tasks, size, opset, files, verification)
