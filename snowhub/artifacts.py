"""The hub's models, loaded and verified once: the source, each task's delta, each probe set.

Everything that runs a model reads through :class:`Artifacts` — training (the source), serving, the
forgetting checker — so a file is checked against its recorded sha256 and its registry record against its
seal before any of it is used. Loaded models are kept on one device and reused, keyed by ``(seq, sha256)``;
a cache must never hide a file changed on disk, so every use ``stat``\\ s the file and re-reads and re-hashes
it when its size or modification time changed. Records are verified once too: the source's record and each
task's record are read and their seals checked on first use, then served from memory (a record that differs
from the verified one is checked again, so an edited row is never used unchecked); a server's requests thus
touch the registry only for tasks it has not seen. The forgetting checker and doctor use a fresh
:class:`Artifacts` (an empty cache), so they always re-read and re-hash everything.
"""

from __future__ import annotations

import threading

import torch

from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import recorded_spec, with_family
from snowhub.models.weights import load_source_state
from snowhub.probe import ProbeSet, probe_batch
from snowhub.store import RegistryStore, SourceRecord, TaskRecord, file_stamp, load_safetensors_verified


def build_source(record: SourceRecord, state: dict[str, torch.Tensor]) -> FrozenSource:
    """The frozen source of `record` from its weights `state` (on the CPU).

    The hub's recorded taps are its contract with its deltas: a later snowhub may tap new hubs elsewhere,
    but this hub is always served as it was recorded.
    """
    spec = recorded_spec(record.name, record.taps, record.preprocessing, record.head_classes is not None)
    backbone = spec.build()
    spec = with_family(spec, backbone)  # a discovered source's delta family, read off its modules
    load_source_state(spec, backbone, state)
    return FrozenSource(spec, backbone, has_head=record.head_classes is not None)


def build_delta(shape: dict, state: dict[str, torch.Tensor]) -> Delta:
    """A registered delta (eval mode, channel pooling frozen) from its recorded ``delta_shape`` and `state`.

    Raises:
        RuntimeError: `state` does not fit the shape (a file that does not belong to its record).
    """
    delta = Delta(DeltaShape.from_dict(shape))
    delta.load_state_dict(state)
    return delta.eval()


class Artifacts:
    """Verified models of one hub on one device, loaded once per process.

    Args:
        registry: the open hub registry.
        device: where the source and deltas are kept (moved there once, when first loaded).

    Thread-safe: loads are serialised, and a model is only shared once fully loaded and moved, so an
    out-of-memory error halfway leaves nothing half-moved in the cache.
    """

    def __init__(self, registry: RegistryStore, device: torch.device):
        self.registry = registry
        self.device = device
        self._lock = threading.RLock()
        self._source: tuple[tuple[int, int], FrozenSource] | None = None
        self._deltas: dict[tuple[int, str], tuple[tuple[int, int], Delta]] = {}
        self._source_record: SourceRecord | None = None  # verified once (the source never changes)
        self._tasks: dict[int, TaskRecord] = {}  # seq → the task's record as verified
        self._resolved: dict[str, TaskRecord] = {}  # reference → its record, while the registry's mark holds
        self._mark: object = None
        self.file_reads = 0  # weight files read and hashed so far (tests count them)
        self.record_checks = 0  # registry seals checked so far (tests count them)

    def _read(self, relative: str, sha256: str) -> tuple[tuple[int, int], dict[str, torch.Tensor]]:
        path = self.registry.layout.resolve(relative)
        stamp = file_stamp(path) if path.exists() else (-1, -1)
        state = load_safetensors_verified(path, sha256)  # IntegrityError if missing or changed
        self.file_reads += 1
        return stamp, state

    def _unchanged_since(self, relative: str, stamp: tuple[int, int]) -> bool:
        """Whether the file has the (size, mtime) `stamp` it had when it was read and verified."""
        path = self.registry.layout.resolve(relative)
        try:
            return file_stamp(path) == stamp
        except OSError:
            return False

    def _check(self, record: SourceRecord | TaskRecord) -> None:
        self.registry.check_record(record)
        self.record_checks += 1

    def source_record(self) -> SourceRecord:
        """The source's registry record, its seal checked on first use. Raises IntegrityError if it was edited."""
        if self._source_record is None:
            record = self.registry.source()
            self._check(record)
            self._source_record = record
        return self._source_record

    def verify(self, task: TaskRecord) -> TaskRecord:
        """`task`, its record's seal checked unless this very record was verified before.

        Raises:
            IntegrityError: the task's registry row was edited after it was written.
        """
        if self._tasks.get(task.seq) != task:  # dataclass equality: every field, so an edited copy is re-checked
            self._check(task)
            self._tasks[task.seq] = task
        return task

    def task(self, reference: str) -> TaskRecord:
        """The record the task reference `reference` (``birds``, ``birds@2``, ``birds@staging``) names now,
        verified. Resolved through the registry on first use and kept until the registry changes (its change
        mark, one small query per call, moves with every task row and lifecycle event), so a long-lived
        predictor follows a moved alias or a retired version without re-reading rows on every call.

        Raises:
            TaskNotFoundError: no such task, version or alias, or a retired version (naming what there is).
            InvalidNameError: a malformed reference. IntegrityError: its record or the events were edited.
        """
        mark = self.registry.change_mark()
        with self._lock:
            if mark != self._mark:
                self._resolved, self._mark = {}, mark
            record = self._resolved.get(reference)
        if record is None:
            record = self.verify(self.registry.resolve(reference))
            with self._lock:
                self._resolved[reference] = record
        return record

    def source(self) -> FrozenSource:
        """The frozen source on :attr:`device`, verified (record seal, file sha256) when (re-)loaded.

        Raises:
            IntegrityError: the record or the weights file changed since ``init``.
        """
        record = self.source_record()
        with self._lock:
            if self._source is None or not self._unchanged_since(record.weights_file, self._source[0]):
                stamp, state = self._read(record.weights_file, record.weights_file_sha256)
                self._source = None
                self._source = (stamp, build_source(record, state).to(self.device))
            return self._source[1]

    def loaded_source(self) -> FrozenSource | None:
        """The source if it was loaded already (no file is read), else None."""
        return None if self._source is None else self._source[1]

    def delta(self, task: TaskRecord) -> Delta:
        """Task `task`'s delta on :attr:`device`, verified (record seal, file sha256) when (re-)loaded.

        Raises:
            IntegrityError: the record or the delta file changed since registration.
        """
        self.verify(task)
        key = (task.seq, task.weights_file_sha256)
        with self._lock:
            cached = self._deltas.get(key)
            if cached is None or not self._unchanged_since(task.weights_file, cached[0]):
                self._deltas.pop(key, None)
                stamp, state = self._read(task.weights_file, task.weights_file_sha256)
                delta = build_delta(task.hyperparams["delta_shape"], state).to(self.device)
                self._deltas[key] = (stamp, delta)
            return self._deltas[key][1]

    def probe(self, task: TaskRecord) -> ProbeSet:
        """Task `task`'s probe set (on the CPU; read and hashed on every call, it is only for checks).

        Raises:
            IntegrityError: the record or the probe file changed since registration.
        """
        self.registry.check_record(task)
        _, tensors = self._read(task.probe_file, task.probe_file_sha256)
        return ProbeSet.from_tensors(tensors, task.probe_environment, probe_batch(task.hyperparams))
