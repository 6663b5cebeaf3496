"""Which tasks the server answers: found in the registry, verified once, re-checked when a file changes.

A background poll (every ``poll_s``; a request for an unknown name also looks at once) compares the largest
task ``seq`` with the last one seen: one indexed query. A task committed by ``add-task`` in another process
is then loaded and verified (record seal, delta sha256) once, through :class:`~snowhub.artifacts.Artifacts`.
A task that fails its check is not served: requests for it get 503 with the reason, the others still answer,
and the check is repeated only when its file changes on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from snowhub.artifacts import Artifacts
from snowhub.errors import IntegrityError, SnowhubError, TaskNotFoundError
from snowhub.names import SOURCE_TASK
from snowhub.store import TaskRecord, file_stamp


@dataclass(frozen=True)
class ServedTask:
    """A task the server knows: its registry facts (``record`` is None for the source's own head)."""

    name: str
    seq: int
    classes: tuple[str, ...]
    image_size: int
    sha256: str
    metrics: dict
    record: TaskRecord | None

    def metadata(self) -> dict:
        """``GET /v2/models/{task}``: OIP model metadata plus what the registry records. One input per way of
        sending images: ``images`` (decoded pixels) and ``image_files`` (encoded files); a request sends one."""
        return {"name": self.name, "versions": list(VERSIONS), "platform": "snowhub",
                "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 3, self.image_size, self.image_size]},
                           {"name": "image_files", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]},
                            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}],
                "seq": self.seq, "classes": list(self.classes), "image_size": self.image_size,
                "sha256": self.sha256, "metrics": self.metrics}


VERSIONS = ("1",)  # every task has one version until tasks get versions of their own


def resolve_version(task: ServedTask, version: str | None) -> str:
    """The version of `task` that a route names (None, as in ``/v2/models/{task}/infer``: the latest).

    Raises:
        TaskNotFoundError: `task` has no such version (404).
    """
    if version is None:
        return VERSIONS[-1]
    if version not in VERSIONS:
        raise TaskNotFoundError(f"task {task.name!r} has no version {version!r}; its versions are "
                                f"{', '.join(VERSIONS)}")
    return version


class Unavailable(IntegrityError):
    """A known task that is not served now (its files failed their check): HTTP 503."""


def _metrics(record: TaskRecord) -> dict:
    return {"val_top1": record.val_top1, "val_top5": record.val_top5, "val_loss": record.val_loss,
            "probe_top1": record.probe_top1}


def _stamp(path) -> tuple[int, int] | None:
    """:func:`~snowhub.store.file_stamp` of `path`, None when it is missing."""
    try:
        return file_stamp(path)
    except OSError:
        return None


class Catalog:
    """The served tasks of one registry (thread-safe).

    Args:
        artifacts: the verified models (their registry is the hub's, opened read-only).
        only: serve just these names (``--tasks``); None = every task, including ones added later.
        poll_s: seconds between looks at the registry for new tasks.
        prepare: called with each task when it is verified (the server builds the task's runtime graphs
            there, off the request path); a SnowhubError it raises makes the task unavailable with the reason.
    """

    def __init__(self, artifacts: Artifacts, only: tuple[str, ...] | None, poll_s: float,
                 prepare: Callable[[ServedTask], None] = lambda task: None):
        self.artifacts = artifacts
        self.prepare = prepare
        self.registry = artifacts.registry
        self.only = None if only is None else tuple(dict.fromkeys(only))
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._tasks: dict[str, ServedTask] = {}
        self._problems: dict[str, tuple[object, str]] = {}  # name → (file stamp when checked, reason)
        self._last_seq: int | None = None
        self._looked_at = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- discovery ---------------------------------------------------------------------------------

    def refresh(self, at_most_every_s: float = 0.0) -> None:
        """Look for newly committed tasks (one query) and load and verify each new one once."""
        with self._lock:
            if time.monotonic() - self._looked_at < at_most_every_s:
                return
            self._looked_at = time.monotonic()
            last = self.registry.next_seq() - 1
            if last == self._last_seq:
                return
            if self._last_seq is None:
                self._add_head()
            for record in self.registry.tasks():
                if record.name not in self._tasks and (self.only is None or record.name in self.only):
                    self._tasks[record.name] = ServedTask(record.name, record.seq, tuple(record.class_names),
                                                          record.image_size, record.weights_file_sha256,
                                                          _metrics(record), record)
                    self._verify(self._tasks[record.name])
            self._last_seq = last

    def _add_head(self) -> None:
        source = self.registry.source()
        if source.head_classes is not None and (self.only is None or SOURCE_TASK in self.only):
            self._tasks[SOURCE_TASK] = ServedTask(SOURCE_TASK, 0, tuple(source.head_classes),
                                                  int(source.preprocessing["image_size"]), source.weights_file_sha256,
                                                  {}, None)

    def start_polling(self) -> None:
        def poll() -> None:
            while not self._stop.wait(self.poll_s):
                try:
                    self.refresh()
                except SnowhubError:  # a locked or unreadable registry: try again at the next poll
                    pass

        self._poller = threading.Thread(target=poll, name="snowhub-registry-poll", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    # -- checks ------------------------------------------------------------------------------------

    def _file(self, task: ServedTask):
        record = task.record if task.record is not None else self.artifacts.source_record()
        return self.registry.layout.resolve(record.weights_file)

    def _verify(self, task: ServedTask) -> None:
        """Load and verify `task`'s model (cheap when loaded and unchanged); record or clear its problem."""
        stamp = _stamp(self._file(task))
        try:
            if task.record is None:
                self.artifacts.source()
            else:
                self.artifacts.source()
                self.artifacts.delta(task.record)
            self.prepare(task)
        except SnowhubError as error:
            with self._lock:
                self._problems[task.name] = (stamp, str(error))
            return
        with self._lock:
            self._problems.pop(task.name, None)

    def get(self, name: str) -> ServedTask:
        """The task `name`, verified now.

        Raises:
            TaskNotFoundError: no such task served (404). Unavailable: its files failed their check (503).
        """
        task = self._tasks.get(name)
        if task is None:
            self.refresh(at_most_every_s=0.05)
            task = self._tasks.get(name)
        if task is None:
            known = ", ".join(self.names()) or "none yet"
            raise TaskNotFoundError(f"no task named {name!r} is served here; known tasks: {known}")
        problem = self._problems.get(name)
        if problem is not None and problem[0] == _stamp(self._file(task)):
            raise Unavailable(f"task {name!r} is not served: {problem[1]}")
        self._verify(task)  # the file's size and time are checked on every use, re-hashed when they change
        problem = self._problems.get(name)
        if problem is not None:
            raise Unavailable(f"task {name!r} is not served: {problem[1]}")
        return task

    def resolve(self, names: list[str] | None) -> tuple[list[ServedTask], dict[str, str]]:
        """Named tasks (each verified; errors as :meth:`get`), or with None every task that is served now
        and, apart, the reasons of those that are not."""
        if names is not None:
            return [self.get(n) for n in dict.fromkeys(names)], {}
        self.refresh(at_most_every_s=self.poll_s)
        served, unavailable = [], {}
        for name in self.names():
            try:
                served.append(self.get(name))
            except Unavailable as error:
                unavailable[name] = str(error)
        return served, unavailable

    def names(self) -> list[str]:
        """Every known task name: the source's head first, then append order."""
        with self._lock:
            return sorted(self._tasks, key=lambda n: self._tasks[n].seq)

    def problems(self) -> dict[str, str]:
        """Task name → why it is not served, for every known task that is not."""
        with self._lock:
            return {name: reason for name, (_, reason) in self._problems.items()}

    def known(self, name: str) -> ServedTask | None:
        return self._tasks.get(name)
