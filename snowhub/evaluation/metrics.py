"""A task's quality on a labelled test set: top-1, top-5, per-class accuracy, precision, recall and the
confusion matrix, accumulated batch by batch from logits (``snowhub evaluate``; the forward passes are the
serving layer's, :mod:`snowhub.serving.evaluating`).

Rows of the confusion matrix are the true classes, columns the predicted ones, both in the task's class
order (its logit order). A class of the task with no image in the test set has no recall (None); a class
the task never predicted has no precision (None). Macro averages are taken over the classes that have
images in the test set, an undefined precision counting as 0 there (scikit-learn's default), so a test set
that covers part of the task's classes is scored on those classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ClassMetrics:
    """One class of a task on one test set.

    Attributes:
        name: the class name. images: its images in the test set. predicted: images predicted as it.
        correct: its images predicted as it (the diagonal of the confusion matrix).
        recall: ``correct / images`` in % (the class's accuracy); None without images.
        precision: ``correct / predicted`` in %; None when nothing was predicted as it.
    """

    name: str
    images: int
    predicted: int
    correct: int
    recall: float | None
    precision: float | None

    def to_dict(self) -> dict:
        return {"class": self.name, "images": self.images, "predicted": self.predicted, "correct": self.correct,
                "accuracy": _round(self.recall), "precision": _round(self.precision), "recall": _round(self.recall)}


@dataclass(frozen=True)
class Metrics:
    """A task's numbers on a test set (:func:`metrics_of`).

    Attributes:
        images: images evaluated. top1, top5: accuracy in % (top-5 is top-min(5, classes)).
        macro_precision, macro_recall: means over the classes with images in the test set, in % (see the
            module docstring).
        classes: one :class:`ClassMetrics` per task class, in the task's class order.
        confusion: ``confusion[true][predicted]`` image counts, ``(classes, classes)``.
    """

    images: int
    top1: float
    top5: float
    macro_precision: float
    macro_recall: float
    classes: list[ClassMetrics]
    confusion: list[list[int]] = field(repr=False)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def summary(self) -> dict:
        """The numbers without the confusion matrix (what an evaluation event records)."""
        return {"images": self.images, "top1": round(self.top1, 4), "top5": round(self.top5, 4),
                "macro_precision": _round(self.macro_precision), "macro_recall": _round(self.macro_recall),
                "per_class": [c.to_dict() for c in self.classes]}

    def to_dict(self) -> dict:
        return self.summary() | {"confusion": {"classes": self.class_names, "matrix": self.confusion}}


class ConfusionCounter:
    """Accumulates a task's confusion matrix and top-5 hits over batches of logits.

    Args:
        class_names: the task's classes, in logit order.
    """

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        n = len(self.class_names)
        self.matrix = torch.zeros(n, n, dtype=torch.int64)
        self.top5_hits = 0

    @property
    def images(self) -> int:
        return int(self.matrix.sum())

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: `logits` ``(B, classes)`` float, `labels` ``(B,)`` int64 task class indices.

        Raises:
            ValueError: `logits` has another number of classes than the task, or another batch size.
        """
        n = len(self.class_names)
        if logits.dim() != 2 or logits.shape[1] != n or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} do not fit {labels.shape[0]} labels of {n} classes")
        k = min(5, n)
        top = logits.topk(k, dim=1).indices
        labels = labels.to(torch.int64)
        self.matrix += torch.bincount(labels * n + top[:, 0], minlength=n * n).view(n, n)
        self.top5_hits += int((top == labels.view(-1, 1)).any(dim=1).sum())

    def metrics(self) -> Metrics:
        """The numbers so far (:func:`metrics_of`)."""
        return metrics_of(self.matrix, self.top5_hits, self.class_names)


def metrics_of(matrix: torch.Tensor, top5_hits: int, class_names: Sequence[str]) -> Metrics:
    """:class:`Metrics` of a confusion matrix ``(C, C)`` (rows true, columns predicted) and its top-5 hits.

    Raises:
        ValueError: the matrix is empty (no images): a score of nothing is no score.
    """
    images = int(matrix.sum())
    if images == 0:
        raise ValueError("no images were evaluated")
    per_class = []
    for i, name in enumerate(class_names):
        count, predicted, correct = int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i])
        per_class.append(ClassMetrics(name, count, predicted, correct, _percent(correct, count),
                                      _percent(correct, predicted)))
    return Metrics(images=images, top1=100.0 * int(matrix.diagonal().sum()) / images,
                   top5=100.0 * top5_hits / images,
                   macro_precision=_mean([c.precision or 0.0 for c in per_class if c.images]),
                   macro_recall=_mean([c.recall for c in per_class if c.images]),
                   classes=per_class, confusion=matrix.tolist())


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
