"""The resident predictor: verified models kept on their device, every task from one source pass.

A :class:`Predictor` is built once per process (``Hub.predict``, a notebook loop, the HTTP server) and
answers decoded images or uint8 tensors; reading files stays outside it. Tasks trained at the same image
size share one source forward pass (SNOW, section 3.2): a multi-task network per image size and task set
is kept, and the deltas come from :class:`~snowhub.artifacts.Artifacts`, read and hashed once (again only
if a file changes on disk).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from snowhub.artifacts import Artifacts
from snowhub.data import eval_transform
from snowhub.errors import ConfigError, TaskNotFoundError
from snowhub.models.network import MultiTaskNetwork
from snowhub.names import SOURCE_TASK

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


@dataclass(frozen=True)
class _Served:
    """One task to answer: its registry record (None for the source's own head), classes, image size (px)."""

    name: str
    record: object
    classes: list[str]
    image_size: int

    @property
    def key(self) -> tuple:
        return (self.name, None) if self.record is None else (self.name, self.record.seq,
                                                               self.record.weights_file_sha256)


class Predictor:
    """Answers every requested task of a hub, with its models resident on one device.

    Args:
        artifacts: where verified models come from (their device is the predictor's).

    Safe to call from several threads: forward passes share no state, and the caches are locked.

    Attributes:
        FUSE_DELTAS: serve the deltas of one shape as one batched computation (``snowhub.models.fused``,
            logits within 1e-5). Off: on a 2-core CPU its grouped convolutions measured 0.78× (5 tasks) and
            0.46× (20 tasks) the speed of running the deltas one by one; not yet measured on a GPU.
    """

    FUSE_DELTAS = False

    def __init__(self, artifacts: Artifacts):
        self.artifacts = artifacts
        self._lock = threading.Lock()
        # task set → (identity of the models it wraps, network): rebuilt when artifacts reloaded a model
        self._networks: dict[tuple, tuple[tuple[int, ...], MultiTaskNetwork]] = {}

    @property
    def device(self) -> torch.device:
        return self.artifacts.device

    def _served(self, names: Sequence[str] | None) -> list[_Served]:
        registry = self.artifacts.registry
        source = self.artifacts.source_record()
        head = [] if source.head_classes is None else [
            _Served(SOURCE_TASK, None, list(source.head_classes), int(source.preprocessing["image_size"]))]
        if names is None:  # every task: one registry read, not one per name
            served = head + [_Served(r.name, r, list(r.class_names), r.image_size) for r in registry.tasks()]
        else:
            served = []
            for name in dict.fromkeys(names):
                if name == SOURCE_TASK and head:
                    served += head
                else:  # verified records from memory: no registry read per request
                    record = self.artifacts.task(name)
                    served.append(_Served(name, record, list(record.class_names), record.image_size))
        if not served:
            raise TaskNotFoundError(f"the hub at {registry.layout.root} has no tasks to answer yet; "
                                    "add one with `snowhub add-task NAME --data DIR`")
        return served

    def _network(self, group: list[_Served]) -> MultiTaskNetwork:
        """The multi-task network of one image size's tasks (built once; deltas verified when loaded)."""
        source = self.artifacts.source()
        deltas = {t.name: self.artifacts.delta(t.record) for t in group if t.record is not None}
        key = tuple(t.key for t in group)
        models = (id(source), *(id(d) for d in deltas.values()))
        with self._lock:
            cached = self._networks.get(key)
            if cached is None or cached[0] != models:
                head = next((t.name for t in group if t.record is None), None)
                # Horizontal fusion (FUSE_DELTAS) stays off: measured slower than the deltas one by one on
                # the CPU (docs/benchmarks.md, paper-cpu). Probe logits never use it.
                cached = self._networks[key] = (models, MultiTaskNetwork(source, deltas, head,
                                                                         fused=self.FUSE_DELTAS))
            return cached[1]

    @torch.no_grad()
    def logits(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Float32 logits of every task for uint8 `images` ``(B, 3, S, S)``, on the CPU.

        All named tasks must be served at ``S`` px (see ``GET /v2/models/{task}``'s image size).

        Raises:
            ConfigError: `images` is not uint8 ``(B, 3, S, S)``, or a task is served at another size.
            TaskNotFoundError: an unknown task. IntegrityError: a file changed since registration.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected uint8 images (B, 3, H, W), got {str(images.dtype)[6:]} "
                              f"{tuple(images.shape)}")
        served = self._served(tasks)
        size = images.shape[-1]
        wrong = [t.name for t in served if t.image_size != size or images.shape[-2] != size]
        if wrong:
            raise ConfigError(f"tasks {', '.join(wrong)} are served at another image size than "
                              f"{images.shape[-2]}x{size}; send images of the task's size")
        out = self._network(served)(images.to(self.device))
        return {t.name: out[t.name].float().cpu() for t in served}

    @torch.no_grad()
    def predict(self, pictures: Sequence[Image.Image], names: Sequence[str], tasks: Sequence[str] | None = None,
                top: int = 5) -> list[ImagePrediction]:
        """Top-`top` labels with probabilities (%) of every task for decoded RGB `pictures`.

        Args:
            pictures: RGB images of any size (each task's eval transform resizes them).
            names: what to call each picture in the answers.
            tasks: task names (``imagenet`` is the source's own head); None = every task.
            top: answers per task (capped at the task's number of classes).

        Raises:
            ConfigError: `top` < 1. TaskNotFoundError: an unknown task, or none to answer.
            IntegrityError: a stored file changed since registration (never served silently).
        """
        if top < 1:
            raise ConfigError("--top must be at least 1")
        served = self._served(tasks)
        by_size: dict[int, list[_Served]] = defaultdict(list)
        for task in served:
            by_size[task.image_size].append(task)
        results = [ImagePrediction(str(n)) for n in names]
        for size, group in sorted(by_size.items()):
            network = self._network(group)
            transform = eval_transform(size, network.source.spec.eval_resize_ratio)
            for start in range(0, len(pictures), BATCH):
                batch = torch.stack([transform(p) for p in pictures[start:start + BATCH]]).to(self.device)
                out = network(batch)
                for task in group:
                    probs = out[task.name].float().softmax(dim=1).cpu()
                    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
                    for row, (v, i) in enumerate(zip(values.tolist(), indices.tolist())):
                        results[start + row].tasks[task.name] = [(task.classes[c], 100.0 * p) for c, p in zip(i, v)]
        for r in results:
            r.tasks = {t.name: r.tasks[t.name] for t in served}
        return results
