"""The resident predictor: verified models kept on their device, every task from one source pass.

A :class:`Predictor` is built once per process (``Hub.predict``, a notebook loop, the HTTP server) and
answers decoded images or uint8 tensors; reading files stays outside it. It chooses the tasks, preprocesses
(:mod:`snowhub.serving.preprocessing`, shared with the HTTP server), groups the tasks by image size and
turns logits into top-K labels; the forward passes go through its :class:`~snowhub.serving.runtime.Runtime`
(PyTorch, or ONNX Runtime), one source pass per image size and batch for every task (SNOW, section 3.2).
Models come from :class:`~snowhub.artifacts.Artifacts`, read and hashed once (again only if a file changes
on disk).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from snowhub.artifacts import Artifacts
from snowhub.errors import ConfigError, TaskNotFoundError
from snowhub.names import SOURCE_TASK
from snowhub.serving.preprocessing import group_by_size, to_batch
from snowhub.serving.runtime import Runtime, RuntimeTask, TorchRuntime

BATCH = 32  # images per forward pass


@dataclass
class ImagePrediction:
    """Answers for one image.

    Attributes:
        image: the image's name as given (a path, an upload's file name).
        tasks: task name → list of (label, probability %) pairs, most likely first.
    """

    image: str
    tasks: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"image": self.image, "tasks": {
            name: [{"label": label, "probability": round(p, 4)} for label, p in answers]
            for name, answers in self.tasks.items()}}


class Predictor:
    """Answers every requested task of a hub, with its models resident on one device.

    Args:
        artifacts: where verified models come from (their device is the predictor's).
        runtime: what runs the forward passes (:class:`~snowhub.serving.runtime.TorchRuntime` by default;
            see :func:`~snowhub.serving.runtime_select.make_runtime`).

    Safe to call from several threads: forward passes share no state, and the caches are locked.
    """

    def __init__(self, artifacts: Artifacts, runtime: Runtime | None = None):
        self.artifacts = artifacts
        self.runtime = runtime if runtime is not None else TorchRuntime(artifacts)

    @property
    def device(self) -> torch.device:
        return self.artifacts.device

    def tasks(self, names: Sequence[str | RuntimeTask] | None = None) -> list[RuntimeTask]:
        """The tasks `names` as the runtime answers them, each under the name it was asked by.

        A name is a task reference (:mod:`snowhub.store.references`): ``birds`` (alias ``production`` if set,
        else the latest version not retired), ``birds@2``, ``birds@staging``; ``imagenet`` is the source's
        own head. A :class:`~snowhub.serving.runtime.RuntimeTask` is taken as it is (the server resolves and
        verifies its versions itself). None = every task as its bare name resolves now, the head first;
        retired versions never answer.

        Raises:
            TaskNotFoundError: an unknown name, version or alias, a retired version, or no task at all.
            InvalidNameError: a malformed reference. IntegrityError: an edited record or event.
        """
        registry = self.artifacts.registry
        source = self.artifacts.source_record()
        head = [] if source.head_classes is None else [
            RuntimeTask(SOURCE_TASK, None, tuple(source.head_classes), int(source.preprocessing["image_size"]))]
        if names is None:  # every task: one registry read, not one per name
            served = head + [RuntimeTask(r.name, r, tuple(r.class_names), r.image_size)
                             for r in registry.current_tasks()]
        else:
            served = []
            for name in {(n.name if isinstance(n, RuntimeTask) else n): n for n in names}.values():
                if isinstance(name, RuntimeTask):
                    served.append(name)
                elif name == SOURCE_TASK and head:
                    served += head
                else:  # verified records from memory until the registry changes (one small query)
                    record = self.artifacts.task(name)
                    served.append(RuntimeTask(name, record, tuple(record.class_names), record.image_size))
        if not served:
            raise TaskNotFoundError(f"the hub at {registry.layout.root} has no tasks to answer yet; "
                                    "add one with `snowhub add-task NAME --data DIR`")
        return served

    def logits(self, images: torch.Tensor, tasks: Sequence[str | RuntimeTask] | None = None) -> dict[str, torch.Tensor]:
        """Float32 logits ``(B, classes)`` of every task for uint8 `images` ``(B, 3, S, S)``, on the CPU.

        All named tasks must be served at ``S`` px (see ``GET /v2/models/{task}``'s image size).

        Raises:
            ConfigError: `images` is not uint8 ``(B, 3, S, S)``, or a task is served at another size.
            TaskNotFoundError: an unknown task. IntegrityError: a file changed since registration.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected uint8 images (B, 3, H, W), got {str(images.dtype)[6:]} "
                              f"{tuple(images.shape)}")
        served = self.tasks(tasks)
        size = images.shape[-1]
        wrong = [t.name for t in served if t.image_size != size or images.shape[-2] != size]
        if wrong:
            raise ConfigError(f"tasks {', '.join(wrong)} are served at another image size than "
                              f"{images.shape[-2]}x{size}; send images of the task's size")
        return self.runtime.logits(images, served)

    def prepare(self, names: Sequence[str | RuntimeTask] | None = None, wait: bool = True) -> dict[str, str]:
        """Have the runtime load (or build) and check what tasks `names` need (None = every task) before their
        first request (:meth:`~snowhub.serving.runtime.Runtime.prepare`; `wait=False`: in the background).
        Returns task name → why the runtime cannot serve it, for the tasks known by now not to be.

        Raises:
            TaskNotFoundError: an unknown name. IntegrityError: an edited record.
        """
        return self.runtime.prepare(self.tasks(names), wait)

    def resize_ratio(self) -> float:
        """The source's eval resize ratio (shorter side ÷ crop size), as its recorded preprocessing says."""
        return self.artifacts.source().spec.eval_resize_ratio

    def predict(self, pictures: Sequence[Image.Image], names: Sequence[str], tasks: Sequence[str] | None = None,
                top: int = 5) -> list[ImagePrediction]:
        """Top-`top` labels with probabilities (%) of every task for decoded RGB `pictures`.

        Args:
            pictures: RGB images of any size (each task's eval transform resizes them).
            names: what to call each picture in the answers.
            tasks: task references (``birds``, ``birds@2``, ``birds@staging``; ``imagenet`` is the source's own
                head), see :meth:`tasks`; None = every task as its bare name resolves now.
            top: answers per task (capped at the task's number of classes).

        Raises:
            ConfigError: `top` < 1. TaskNotFoundError: an unknown task, or none to answer.
            IntegrityError: a stored file changed since registration (never served silently).
        """
        if top < 1:
            raise ConfigError(f"`top` must be at least 1, got {top}")
        served = self.tasks(tasks)
        results = [ImagePrediction(str(n)) for n in names]
        ratio = self.resize_ratio()
        for size, group in group_by_size(served).items():
            for start in range(0, len(pictures), BATCH):
                out = self.runtime.logits(to_batch(pictures[start:start + BATCH], size, ratio), group)
                for task in group:
                    probs = out[task.name].softmax(dim=1)
                    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
                    for row, (v, i) in enumerate(zip(values.tolist(), indices.tolist())):
                        results[start + row].tasks[task.name] = [(task.classes[c], 100.0 * p) for c, p in zip(i, v)]
        for r in results:
            r.tasks = {t.name: r.tasks[t.name] for t in served}
        return results
