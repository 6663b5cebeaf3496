"""Serving: answer every requested task for a batch of images with one source pass per image size
(SNOW, section 3.2)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snowhub.data import eval_transform, load_rgb
from snowhub.errors import DataError
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import MultiTaskNetwork

BATCH = 32


@dataclass
class ImagePrediction:
    """Answers for one image.

    Attributes:
        image: the image path as given.
        tasks: task name → list of (label, probability %) pairs, most likely first.
    """

    image: str
    tasks: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"image": self.image, "tasks": {
            name: [{"label": label, "probability": round(p, 4)} for label, p in answers]
            for name, answers in self.tasks.items()}}


def _load(path: Path) -> "object":
    if path.is_dir():
        raise DataError(f"{path} is a directory; give image files (e.g. {path}/*.jpg)")
    return load_rgb(path)


@dataclass(frozen=True)
class ServedTask:
    """One task to answer: its delta (None for the source's own classifier), class names and image size (px)."""

    name: str
    delta: Delta | None
    classes: list[str]
    image_size: int


@torch.no_grad()
def predict_images(source: FrozenSource, tasks: list[ServedTask], images: list[Path], top: int,
                   device: torch.device) -> list[ImagePrediction]:
    """Top-`top` answers of each task for each image.

    Args:
        source: the frozen source.
        tasks: what to answer, in the order answers are reported.
        images: image paths; all are read (and rejected with DataError) before any model runs.
        top: answers per task (capped at the task's number of classes).
        device: where to run.

    Returns:
        One :class:`ImagePrediction` per image, in the given order.
    """
    pictures = [_load(p) for p in images]
    by_size: dict[int, list[ServedTask]] = defaultdict(list)
    for task in tasks:
        by_size[task.image_size].append(task)
    results = [ImagePrediction(str(p)) for p in images]
    source.to(device)
    try:
        for size, group in sorted(by_size.items()):
            # Tasks trained at the same resolution share one source forward pass.
            head = next((t.name for t in group if t.delta is None), None)
            net = MultiTaskNetwork(source, {t.name: t.delta for t in group if t.delta is not None}, head).to(device)
            classes = {t.name: t.classes for t in group}
            transform = eval_transform(size)
            for start in range(0, len(pictures), BATCH):
                batch = torch.stack([transform(pic) for pic in pictures[start:start + BATCH]]).to(device)
                for name, logits in net(batch).items():
                    probs = logits.float().softmax(dim=1).cpu()
                    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
                    for row, (v, i) in enumerate(zip(values.tolist(), indices.tolist())):
                        results[start + row].tasks[name] = [(classes[name][c], 100.0 * p) for c, p in zip(i, v)]
            net.cpu()
    finally:
        source.cpu()
    for r in results:
        r.tasks = {t.name: r.tasks[t.name] for t in tasks}
    return results
