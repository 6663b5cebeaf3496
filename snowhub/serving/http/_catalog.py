"""Which tasks the server answers, and which version each name means now: found in the registry, verified
once, re-checked when a file changes.

A served name follows its reference (:mod:`snowhub.store.references`): ``birds`` is the version alias
``production`` points to if set, else the latest version not retired; ``birds@2`` pins a version and
``birds@staging`` follows an alias. A background poll (every ``poll_s``; a request for an unknown name also
looks at once) compares the registry's change mark (the largest task ``seq`` and event id: one indexed query
each) with the last one seen; when it moved, the task rows and the lifecycle state are read again in one
snapshot, so an alias moved or a version retired in another process changes what a name answers within one
poll, without a restart. Every version not retired is loaded and verified (record seal, delta sha256) once,
through :class:`~snowhub.artifacts.Artifacts`, off the request path. A version that fails its check is not
served: requests for it get 503 with the reason, the others still answer, and the check is repeated only when
its file changes on disk. A retired version is not served (404 naming ``snowhub restore``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from snowhub.artifacts import Artifacts
from snowhub.errors import IntegrityError, InvalidNameError, SnowhubError, TaskNotFoundError
from snowhub.names import SOURCE_TASK
from snowhub.serving.http._served import ServedTask
from snowhub.store import TaskRecord, file_stamp
from snowhub.store.events import LifecycleState
from snowhub.store.references import TaskReference, parse_reference, resolve


class Unavailable(IntegrityError):
    """A known task that is not served now (its files failed their check): HTTP 503."""


def route_reference(task: str, version: str | None) -> str:
    """The task reference a route names: `task` itself (``birds``, ``birds@2``, ``birds@staging``), or with
    ``/versions/{version}`` ``task@version`` (`version` a number or an alias).

    Raises:
        TaskNotFoundError: `version` is neither a version nor an alias name, or `task` pins one already (404).
    """
    if version is None:
        return task
    try:
        if "@" in task:
            raise InvalidNameError(f"{task!r} names a version already")
        return str(parse_reference(f"{task}@{version}"))
    except InvalidNameError:
        raise TaskNotFoundError(f"task {task!r} has no version {version!r}; a version is a number (1, 2, …) or "
                                "an alias, after a task name without '@'") from None


def _stamp(path) -> tuple[int, int] | None:
    """:func:`~snowhub.store.file_stamp` of `path`, None when it is missing."""
    try:
        return file_stamp(path)
    except OSError:
        return None


class Catalog:
    """The served tasks of one registry, every version not retired (thread-safe).

    Args:
        artifacts: the verified models (their registry is the hub's, opened read-only).
        only: serve just the tasks of these names (``--tasks``; a reference counts for its name); None = every
            task, including ones added later.
        poll_s: seconds between looks at the registry for new tasks, versions, aliases and retirements.
        prepare: called with each version when it is verified (the server builds its runtime graphs there,
            off the request path); a SnowhubError it raises makes the version unavailable with the reason.
    """

    def __init__(self, artifacts: Artifacts, only: tuple[str, ...] | None, poll_s: float,
                 prepare: Callable[[ServedTask], None] = lambda task: None):
        self.artifacts = artifacts
        self.prepare = prepare
        self.registry = artifacts.registry
        self.only = None if only is None else tuple(dict.fromkeys(parse_reference(n).name for n in only))
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._tasks: dict[str, ServedTask] = {}  # key (name@version, or imagenet) → every version seen
        self._records: list[TaskRecord] = []  # the served names' rows, every version, in seq order
        self._state = LifecycleState()
        self._current: dict[str, str] = {}  # served name → the key its bare name resolves to now
        self._problems: dict[str, tuple[object, str]] = {}  # key → (file stamp when checked, reason)
        self._mark: object = None
        self._looked_at = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- discovery ---------------------------------------------------------------------------------

    def refresh(self, at_most_every_s: float = 0.0) -> None:
        """Look for changes (one query); when there are, read the rows and the lifecycle state again and load
        and verify each version not seen before, once.

        Raises:
            IntegrityError: the registry's events cannot be trusted (the state seen last stays in use).
        """
        with self._lock:
            if time.monotonic() - self._looked_at < at_most_every_s:
                return
            self._looked_at = time.monotonic()
            mark = self.registry.change_mark()
            if mark == self._mark:
                return
            if self._mark is None:
                self._add_head()
            records, state = self.registry.snapshot()
            self._records = [r for r in records if self.only is None or r.name in self.only]
            self._state = state
            for record in self._records:
                if record.reference not in self._tasks and not state.is_retired(record.name, record.version):
                    self._tasks[record.reference] = ServedTask.of(record)
                    self._verify(self._tasks[record.reference])
            self._current = {name: self._resolve(TaskReference(name)).key
                             for name in dict.fromkeys(r.name for r in self._records) if self._resolves(name)}
            self._mark = mark

    def _add_head(self) -> None:
        source = self.registry.source()
        if source.head_classes is not None and (self.only is None or SOURCE_TASK in self.only):
            self._tasks[SOURCE_TASK] = ServedTask.head(source)

    def _resolves(self, name: str) -> bool:
        try:
            resolve(self._records, self._state, TaskReference(name))
        except TaskNotFoundError:  # every version retired
            return False
        return True

    def _resolve(self, ref: TaskReference) -> ServedTask:
        """The served version `ref` names in the state seen last (TaskNotFoundError as the registry says it)."""
        record = resolve(self._records, self._state, ref, where="this server's hub")
        task = self._tasks.get(record.reference)
        if task is None:  # a version restored since it was seen: load and verify it now
            task = self._tasks[record.reference] = ServedTask.of(record)
            self._verify(task)
        return task

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
            self.artifacts.source()
            if task.record is not None:
                self.artifacts.delta(task.record)
            self.prepare(task)
        except SnowhubError as error:
            with self._lock:
                self._problems[task.key] = (stamp, str(error))
            return
        with self._lock:
            self._problems.pop(task.key, None)

    # -- looking up --------------------------------------------------------------------------------

    def _find(self, reference: str) -> ServedTask:
        if reference == SOURCE_TASK and SOURCE_TASK in self._tasks:
            return self._tasks[SOURCE_TASK]
        ref = parse_reference(reference)  # InvalidNameError (400) for a malformed one
        with self._lock:
            if self.only is not None and ref.name not in self.only:
                raise TaskNotFoundError(f"no task named {ref.name!r} is served here; known tasks: "
                                        f"{', '.join(self.names()) or 'none yet'}")
            return self._resolve(ref)

    def lookup(self, reference: str) -> ServedTask:
        """The version `reference` (``birds``, ``birds@2``, ``birds@staging``, ``imagenet``) names now, as the
        last poll saw the registry (looking again at once for a name not found), not checked again.

        Raises:
            InvalidNameError: a malformed reference (400). TaskNotFoundError: no such task, version or alias,
            or a retired version (404).
        """
        try:
            return self._find(reference)
        except TaskNotFoundError:
            self.refresh(at_most_every_s=0.05)  # perhaps added (or restored) a moment ago
            return self._find(reference)

    def get(self, reference: str) -> ServedTask:
        """:meth:`lookup`'s version, verified now.

        Raises:
            InvalidNameError, TaskNotFoundError: as :meth:`lookup`. Unavailable: its files failed their check (503).
        """
        task = self.lookup(reference)
        problem = self._problems.get(task.key)
        if problem is not None and problem[0] == _stamp(self._file(task)):
            raise Unavailable(f"task {task.key!r} is not served: {problem[1]}")
        self._verify(task)  # the file's size and time are checked on every use, re-hashed when they change
        problem = self._problems.get(task.key)
        if problem is not None:
            raise Unavailable(f"task {task.key!r} is not served: {problem[1]}")
        return task

    def resolve(self, references: list[str] | None) -> tuple[list[tuple[str, ServedTask]], dict[str, str]]:
        """``(reference as asked, version it names)`` for each of `references` (each verified; errors as
        :meth:`get`), or with None every served name as its bare name resolves now and, apart, the reasons of
        the names that are not served."""
        if references is not None:
            return [(r, self.get(r)) for r in dict.fromkeys(references)], {}
        self.refresh(at_most_every_s=self.poll_s)
        served, unavailable = [], {}
        for name in self.names():
            try:
                served.append((name, self.get(name)))
            except Unavailable as error:
                unavailable[name] = str(error)
            except TaskNotFoundError:  # retired between names() and get()
                continue
        return served, unavailable

    def names(self) -> list[str]:
        """Every served name: the source's head first, then in the order the tasks were first added (a task
        whose every version is retired is left out)."""
        with self._lock:
            return ([SOURCE_TASK] if SOURCE_TASK in self._tasks else []) + list(self._current)

    def known(self, name: str) -> ServedTask | None:
        """The version the served name `name` means now (no registry read), or None."""
        with self._lock:
            key = SOURCE_TASK if name == SOURCE_TASK else self._current.get(name)
            return None if key is None else self._tasks.get(key)

    def versions(self, name: str) -> list[int]:
        """Every version of `name` served now (not retired), oldest first."""
        with self._lock:
            if name == SOURCE_TASK:
                return [1] if SOURCE_TASK in self._tasks else []
            return [r.version for r in self._records if r.name == name and not self._state.is_retired(name, r.version)]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias → version of the task called `name`, as the registry said at the last poll."""
        with self._lock:
            return self._state.aliases_of(name)

    def problems(self) -> dict[str, str]:
        """Served name → why the version it means now is not served, for every name whose version is not."""
        with self._lock:
            keys = {name: self.known(name).key for name in self.names() if self.known(name) is not None}
            return {name: self._problems[key][1] for name, key in keys.items() if key in self._problems}
