"""``snowhub evaluate``: a task scored on a labelled test folder through the serving path.

The images go the way ``predict`` takes them (:func:`~snowhub.data.load_rgb`, then
:func:`~snowhub.serving.preprocessing.to_batch`, then the :class:`~snowhub.serving.Predictor`'s runtime), so
the labels counted are exactly the ones ``Hub.predict`` answers. Decoding runs in a few threads ahead of the
forward passes (Pillow and the runtimes release the GIL), at most a few batches ahead so memory stays
bounded; the numbers come from :mod:`snowhub.evaluation.metrics`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from snowhub.data import load_rgb
from snowhub.data.labelled import LabelledImages, labelled_folder
from snowhub.errors import ConfigError, DataError
from snowhub.evaluation.metrics import ConfusionCounter, Metrics
from snowhub.progress import Progress, SilentProgress
from snowhub.serving.predictor import Predictor
from snowhub.serving.preprocessing import to_batch
from snowhub.serving.runtime import RuntimeTask
from snowhub.store import RegistryStore
from snowhub.store.records import EventRecord


@dataclass
class Evaluation:
    """One task scored on one labelled folder.

    Attributes:
        task: the task's name. version: its version. reference: what the caller named (``birds@2``).
        data: the test folder (absolute). fingerprint: :meth:`~snowhub.data.labelled.LabelledImages.fingerprint`.
        class_images: class name → images of the test folder in it.
        metrics: the numbers (:class:`~snowhub.evaluation.metrics.Metrics`).
        seconds: wall time of reading and running every image. runtime: what ran the forward passes.
        plot: the confusion matrix PNG, when one was drawn. event: the registry event's id, when recorded.
    """

    task: str
    version: int
    reference: str
    data: str
    fingerprint: str
    class_images: dict[str, int]
    metrics: Metrics
    seconds: float
    runtime: str
    plot: str | None = None
    event: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.metrics.images / self.seconds if self.seconds > 0 else float("inf")

    def dataset(self) -> dict:
        """What identifies the test set: path, fingerprint, images and classes."""
        return {"path": self.data, "fingerprint": self.fingerprint, "images": self.metrics.images,
                "classes": self.class_images}

    def summary(self) -> dict:
        """What the registry's ``evaluated`` event records (no confusion matrix, no timing)."""
        return {"reference": self.reference, "dataset": self.dataset(), "metrics": self.metrics.summary()}

    def to_dict(self) -> dict:
        return {"task": self.task, "version": self.version, "reference": self.reference, "dataset": self.dataset(),
                "metrics": self.metrics.to_dict(), "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1), "runtime": self.runtime,
                "plot": self.plot, "event": self.event}


def record_evaluation(registry: RegistryStore, evaluation: Evaluation) -> int:
    """Append `evaluation` to the registry as a sealed ``evaluated`` event of its task and version (dataset
    fingerprint and summary, numbers; the event records when and by whom); returns the event's id.

    Raises:
        HubLockedError, HubReadOnlyError: the registry cannot be written now.
    """
    return registry.append_event("evaluated", evaluation.task, evaluation.version, evaluation.summary()).id


def recorded_evaluations(events: Sequence[EventRecord], name: str) -> list[dict]:
    """The ``evaluated`` events of the task called `name` (every version), oldest first, as ``show`` lists them:
    event id, when, by whom, version, test set (path, fingerprint, images) and top-1 / top-5 / macro numbers."""
    rows = []
    for e in events:
        if e.kind == "evaluated" and e.task == name:
            data, m = e.payload.get("dataset", {}), e.payload.get("metrics", {})
            rows.append({"event": e.id, "at": e.at.isoformat(), "user": e.user, "host": e.host,
                         "version": e.version, "data": data.get("path"), "fingerprint": data.get("fingerprint"),
                         "images": m.get("images"), "top1": m.get("top1"), "top5": m.get("top5"),
                         "macro_precision": m.get("macro_precision"), "macro_recall": m.get("macro_recall")})
    return rows


def default_workers() -> int:
    """Decoding threads: one per CPU core beyond the first, at least one and at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def evaluate_folder(predictor: Predictor, name: str, data: Path | str, batch_size: int = 32,
                    progress: Progress | None = None, workers: int | None = None) -> Evaluation:
    """Score task `name` (as the predictor names it) on the labelled folder `data`
    (:func:`~snowhub.data.labelled.labelled_folder`), `batch_size` images per forward pass.

    Raises:
        DataError: no images, an unreadable image, or class folders the task does not know (one line naming
            them; nothing is scored). ConfigError: `batch_size` or `workers` below 1.
        TaskNotFoundError: no such task. IntegrityError: a stored file changed since registration.
    """
    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"`workers` must be at least 1, got {workers}")
    task = predictor.tasks([name])[0]
    images = labelled_folder(data)
    labels = _task_labels(task, images)
    counter = ConfusionCounter(task.classes)
    progress = progress or SilentProgress()
    chunks = [images.samples[i:i + batch_size] for i in range(0, len(images.samples), batch_size)]
    started = time.perf_counter()
    progress.start(f"evaluating {name}", len(chunks))
    for chunk, batch in zip(chunks, _decoded(chunks, task.image_size, predictor.resize_ratio(), workers)):
        logits = predictor.logits(batch, [name])[name]
        counter.add(logits, torch.tensor([labels[label] for _, label in chunk]))
        progress.advance(1, **{"top-1": f"{100.0 * int(counter.matrix.diagonal().sum()) / counter.images:.1f} %"})
    seconds = time.perf_counter() - started
    metrics = counter.metrics()
    progress.finish(f"{name}: top-1 {metrics.top1:.2f} %, top-5 {metrics.top5:.2f} % on {metrics.images} images")
    record = task.record
    return Evaluation(task=record.name if record is not None else name,
                      version=int(getattr(record, "version", 1)), reference=name, data=str(images.root),
                      fingerprint=images.fingerprint(), class_images=images.counts(), metrics=metrics,
                      seconds=seconds, runtime=predictor.runtime.runtimes([name]).get(name, predictor.runtime.name))


def _task_labels(task: RuntimeTask, images: LabelledImages) -> list[int]:
    """The task's class index of each class of `images` (DataError naming the classes the task lacks)."""
    index = {c: i for i, c in enumerate(task.classes)}
    unknown = [c for c in images.class_names if c not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        known = ", ".join(task.classes[:8]) + (", ..." if len(task.classes) > 8 else "")
        raise DataError(f"task {task.name} does not know the classes {shown} of {images.root} (it knows {known}); "
                        "name each class folder as one of the task's classes")
    return [index[c] for c in images.class_names]


def _decoded(chunks: Sequence[list[tuple[Path, int]]], size: int, ratio: float,
             workers: int) -> Iterator[torch.Tensor]:
    """uint8 batches ``(B, 3, size, size)`` of `chunks`, in order, decoded by `workers` threads at most
    ``workers + 1`` batches ahead."""
    def decode(chunk: list[tuple[Path, int]]) -> torch.Tensor:
        return to_batch([load_rgb(path) for path, _ in chunk], size, ratio)

    with ThreadPoolExecutor(workers, thread_name_prefix="snowhub-decode") as pool:
        pending: deque = deque()
        ahead = iter(chunks)
        for chunk in ahead:
            pending.append(pool.submit(decode, chunk))
            if len(pending) > workers:
                break
        while pending:
            batch = pending.popleft().result()
            next_chunk = next(ahead, None)
            if next_chunk is not None:
                pending.append(pool.submit(decode, next_chunk))
            yield batch
