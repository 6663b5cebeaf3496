"""One version of a task as the server knows it (:class:`ServedTask`), and what it says about itself over OIP."""

from __future__ import annotations

from dataclasses import dataclass

from snowhub.names import SOURCE_TASK
from snowhub.serving.runtime import RuntimeTask
from snowhub.store import SourceRecord, TaskRecord


@dataclass(frozen=True)
class ServedTask:
    """One served version of a task: its registry facts (``record`` is None for the source's own head).

    Attributes:
        name: the task's name (``imagenet`` for the source's head). version: which of its versions (1, 2, …).
        key: what the server's batcher and runtime call this very version: ``name@version`` (the reference
            that pins it), or ``imagenet`` for the head; two versions of a task are two models in one batch.
    """

    name: str
    version: int
    seq: int
    classes: tuple[str, ...]
    image_size: int
    sha256: str
    metrics: dict
    record: TaskRecord | None

    @classmethod
    def of(cls, record: TaskRecord) -> ServedTask:
        """The served version of task row `record`."""
        metrics = {"val_top1": record.val_top1, "val_top5": record.val_top5, "val_loss": record.val_loss,
                   "probe_top1": record.probe_top1}
        return cls(record.name, record.version, record.seq, tuple(record.class_names), record.image_size,
                   record.weights_file_sha256, metrics, record)

    @classmethod
    def head(cls, source: SourceRecord) -> ServedTask:
        """The source's own head (task 0, ``imagenet``; one version, 1)."""
        return cls(SOURCE_TASK, 1, 0, tuple(source.head_classes), int(source.preprocessing["image_size"]),
                   source.weights_file_sha256, {}, None)

    @property
    def key(self) -> str:
        return self.name if self.record is None else self.record.reference

    @property
    def runtime_task(self) -> RuntimeTask:
        """This version as the runtime answers it, under :attr:`key`."""
        return RuntimeTask(self.key, self.record, self.classes, self.image_size)

    def metadata(self, versions: list[int], aliases: dict[str, int]) -> dict:
        """``GET /v2/models/{task}[/versions/{v}]``: OIP model metadata plus what the registry records.

        `versions`: every version of the task served now (OIP's ``versions``); `aliases`: alias → version.
        ``version`` says which one this metadata (and an infer on the same route) is about. One input per
        way of sending images: ``images`` (decoded pixels) and ``image_files`` (encoded files); a request
        sends one.
        """
        return {"name": self.name, "versions": [str(v) for v in versions], "version": str(self.version),
                "aliases": {a: str(v) for a, v in aliases.items()}, "platform": "snowhub",
                "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 3, self.image_size, self.image_size]},
                           {"name": "image_files", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]},
                            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}],
                "seq": self.seq, "classes": list(self.classes), "image_size": self.image_size,
                "sha256": self.sha256, "metrics": self.metrics}
