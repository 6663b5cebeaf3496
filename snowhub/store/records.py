"""What the registry records, as plain dataclasses: the ORM rows never leave ``snowhub.store``.

Hashes have one name and one meaning everywhere: ``<file>_sha256`` is the sha256 of that file's bytes;
``tensors_sha256`` is :func:`snowhub.store.files.tensor_digest` of the tensors loaded from it. Paths are
relative to the hub directory. Accuracies are %, times seconds, throughput images/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


@dataclass
class SourceRecord:
    """The hub's frozen source model.

    Attributes:
        name: the source's name (see :func:`snowhub.available_sources`).
        weights_origin: where the weights came from, e.g. ``"torchvision:IMAGENET1K_V2"``, ``"file:/x"``.
        weights_file, weights_file_sha256: the hub's safetensors copy of the weights and its sha256.
        tensors_sha256: digest of the parameters and buffers in that file.
        parameter_count: parameters of the source (all frozen).
        taps: one dict per tapped layer (:meth:`snowhub.models.sources.Tap.to_dict`).
        preprocessing: image size, resize, mean and std the source expects.
        head_classes: class names of the source's own classifier (task 0), or None without a head.
        library_versions: versions of snowhub, torch, torchvision and Python at ``init``.
    """

    name: str
    weights_origin: str
    weights_file: str
    weights_file_sha256: str
    tensors_sha256: str
    parameter_count: int
    taps: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    head_classes: list[str] | None
    library_versions: dict[str, str]
    created_at: datetime | None = None  # set by the registry
    record_sha256: str | None = None  # the seal (snowhub.store.integrity), set by the registry


@dataclass
class TaskRecord:
    """One learned task: a delta on top of the source, appended at position ``seq`` (1, 2, …; never reused).

    Attributes:
        hyperparams: every training option, ``image_size``, ``device`` and the delta's ``delta_shape``.
        cp_indices: tap name → the K source channels its channel pooling subscribes to.
        delta_params, cp_params: parameters of the delta and of its channel pooling.
        metrics: extras, e.g. the per-epoch ``history``.
        weights_file, probe_file: the delta's and the probe set's safetensors files, with their sha256.
        probe_size, probe_top1, probe_logits_sha256: the probe set's size, accuracy (%) and logits digest.
        probe_environment: where the probe logits were computed (:mod:`snowhub.numerics`); None before
            schema 0003.
        dataset_fingerprint, dataset_summary: what the task was trained on.
        lineage: where an imported task came from (e.g. the hub, its original ``seq`` and ``created_at``);
            None for a task trained in this hub (and every task before schema 0005). Sealed like the rest.
        version: which version of the task called ``name`` this is (1, 2, …; schema 0007): ``add-task
            --new-version`` appends the next one, the earlier ones stay as they are.
    """

    seq: int | None
    name: str
    class_names: list[str]
    hyperparams: dict[str, Any]
    cp_indices: dict[str, list[int]]
    delta_params: int
    cp_params: int
    val_top1: float
    val_top5: float
    val_loss: float
    train_seconds: float
    train_images_per_s: float
    metrics: dict[str, Any]
    weights_file: str
    weights_file_sha256: str
    probe_file: str
    probe_file_sha256: str
    probe_size: int
    probe_top1: float
    probe_logits_sha256: str
    dataset_fingerprint: str
    dataset_summary: dict[str, Any]
    probe_environment: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    version: int = 1
    created_at: datetime | None = None  # set by the registry
    record_sha256: str | None = None  # the seal, set by the registry

    @property
    def image_size(self) -> int:
        """The resolution the task was trained at and is served at, px."""
        return int(self.hyperparams["image_size"])

    @property
    def reference(self) -> str:
        """``name@version``: the reference that pins this very row (:mod:`snowhub.store.references`)."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class EventRecord:
    """One sealed change in a task's life (``task_event``, schema 0007; :mod:`snowhub.store.events`).

    Attributes:
        id: its place in the hub's one sequence of events (1, 2, … without a gap).
        at: when it was recorded (UTC). user, host: who recorded it, and on which machine.
        kind: one of :data:`snowhub.store.events.EVENT_KINDS` (``alias_set``, ``retired``, …).
        task, version: the task's name and version it concerns (None where it concerns no task or version).
        payload: what else it records (``{"alias": "production"}``, ``{"key": "team", "value": "vision"}``,
            an evaluation's numbers, …).
        record_sha256: its seal. problem: why it cannot be trusted (its seal or the chain of seals does not
            hold), None when it can.
    """

    id: int
    at: datetime
    user: str
    host: str
    kind: str
    task: str | None
    version: int | None
    payload: dict[str, Any]
    record_sha256: str | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``at`` as ISO 8601; ``problem`` only when there is one)."""
        out = {"id": self.id, "at": self.at.isoformat(), "user": self.user, "host": self.host, "kind": self.kind,
               "task": self.task, "version": self.version, "payload": self.payload}
        return out | ({"problem": self.problem} if self.problem else {})


@dataclass(frozen=True)
class RecordAudit:
    """One registry row read for checking, even when it does not load as a record.

    Attributes:
        key: the source's row id (1) or the task's ``seq``, as stored.
        name: the source's or the task's name, as stored.
        record: the row as a record; None when one of its values does not parse (``problem`` says which).
        problem: why the row does not match its seal (one line, no advice); None when it does.
    """

    key: int
    name: str | None
    record: SourceRecord | TaskRecord | EventRecord | None
    problem: str | None


@dataclass(frozen=True)
class RegistryAudit:
    """Every sealed row of a registry, read in one transaction (:meth:`RegistryStore.audit`).

    Attributes:
        source: the source's row, None when ``init`` never finished.
        tasks: every task's row in ``seq`` order (gaps included: a deleted row is simply absent).
        events: every ``task_event`` row in ``id`` order (schema 0007; ``name`` is the event's kind), its
            problem saying also when the chain of seals breaks before it.
    """

    source: RecordAudit | None
    tasks: list[RecordAudit]
    events: list[RecordAudit] = field(default_factory=list)

    def event_problems(self) -> list[str]:
        """``"event <id> (<kind>): <problem>"`` for every event that cannot be trusted, and ``"task <seq> '<name>':
        …"`` for a task added since the first recorded ``added`` (``version``, ``imported``) event without its own
        (a deleted event the chain alone cannot see: the newest one)."""
        problems = [f"event {e.key} ({e.name}): {e.problem}" for e in self.events if e.problem]
        adding = {e.record.payload.get("seq") for e in self.events if isinstance(e.record, EventRecord)
                  and e.record.kind in ("added", "version", "imported")}
        first = min((seq for seq in adding if isinstance(seq, int)), default=None)
        return problems + [f"task {t.key} {t.name!r}: the event that added it is gone (a task_event row was deleted)"
                           for t in self.tasks if first is not None and t.key >= first and t.key not in adding]

    def problems(self) -> list[str]:
        """``"source: <problem>"`` / ``"task <seq> '<name>': <problem>"`` / ``"event <id> (<kind>): <problem>"`` for
        every row whose seal does not hold."""
        rows = [("source", self.source)] if self.source else []
        rows += [(f"task {t.key} {t.name!r}", t) for t in self.tasks]
        return [f"{what}: {row.problem}" for what, row in rows if row.problem] + self.event_problems()


def field_names(record_type: type) -> list[str]:
    """The stored fields of a record type, in declaration order."""
    return [f.name for f in fields(record_type)]
