"""The registry's tasks and their life: versions, references, aliases, retiring, tags, descriptions, events.

A mixin of :class:`snowhub.store.Registry` (it uses the registry's sessions). Every change is one writer
transaction that reads the task rows and the events, checks the change against the state they give
(:class:`~snowhub.store.events.LifecycleState`) and appends one sealed event: two processes moving the same
alias at once are serialised by the database (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL transaction advisory
lock), both moves are recorded and the last one wins. Nothing here takes the hub's writer lock, so an alias
can move while a task trains. Nothing is ever updated or deleted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from snowhub.errors import ConfigError, IntegrityError, InvalidNameError, SnowhubError, TaskExistsError
from snowhub.errors import TaskNotFoundError
from snowhub.faults import crash_point
from snowhub.names import check_task_name
from snowhub.store import events as _events
from snowhub.store.events import LifecycleState
from snowhub.store.integrity import record_problem
from snowhub.store.models import SourceRow
from snowhub.store.records import EventRecord, TaskRecord
from snowhub.store.references import TaskReference, check_alias_name, parse_reference, resolve
from snowhub.store.rows import record_from_raw as _record

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_CHANGE_MARK = 'SELECT (SELECT max(seq) FROM task), (SELECT max(id) FROM "task_event")'
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
_MAX_TAG_VALUE = 256
_MAX_DESCRIPTION = 4000


def parse_tag(tag: str) -> tuple[str, str | None]:
    """``"team=vision"`` → ``("team", "vision")``; ``"team="`` → ``("team", None)`` (removes the tag).

    Raises:
        ConfigError: no ``=``, a key that is not 1-64 letters, digits, ``_ . : / -``, or a value over 256
            characters or holding a line break.
    """
    key, eq, value = str(tag).partition("=")
    if not eq:
        raise ConfigError(f"`tag` {tag!r} has no '=': give KEY=VALUE (KEY= removes the tag)")
    if not _TAG_KEY.fullmatch(key):
        raise ConfigError(f"`tag` key {key!r} is not valid: use 1-64 letters, digits, '_', '.', ':', '/' or '-'")
    if len(value) > _MAX_TAG_VALUE or any(c in value for c in "\r\n"):
        raise ConfigError(f"`tag` value for {key!r} must be one line of at most {_MAX_TAG_VALUE} characters")
    return key, value or None


class TaskLifecycle:
    """The task half of :class:`snowhub.store.Registry` (see the module docstring)."""

    # -- task rows ----------------------------------------------------------------------------------

    def tasks(self) -> list[TaskRecord]:
        """Every task row, every version, retired ones included, in ``seq`` (append) order."""
        with self._reading() as session:
            return [_record("task", row) for row in self._rows(session, "task")]

    def checked_tasks(self) -> list[tuple[TaskRecord, str | None]]:
        """Every task row with the message of its broken seal (None when it holds), from one query."""
        with self._reading() as session:
            rows = self._rows(session, "task")
            records = [_record("task", row) for row in rows]
        return [(record, self.untrusted(record, problem) if (problem := record_problem(row, "task")) else None)
                for record, row in zip(records, rows, strict=True)]

    def has_task(self, name: str) -> bool:
        """Whether any version of a task called ``name`` is registered (retired ones included)."""
        with self._reading() as session:
            return session.scalar(text("SELECT seq FROM task WHERE name = :name LIMIT 1"), {"name": name}) is not None

    def next_seq(self) -> int:
        """The ``seq`` the next added task will get: 1 + the largest so far, or 1 for an empty hub."""
        with self._reading() as session:
            return (session.scalar(text("SELECT max(seq) FROM task")) or 0) + 1

    # -- events and the state they give ---------------------------------------------------------------

    def events(self, name: str | None = None) -> list[EventRecord]:
        """Every event in order (of the task called `name` only, if given), each with its ``problem`` (None
        when it can be trusted); never raises for a tampered event (``history``, ``doctor`` show them)."""
        with self._reading() as session:
            events = _events.read_events(session.connection())
        return [e for e in events if name is None or e.task == name]

    def _state(self, session: Session) -> tuple[list[TaskRecord], LifecycleState]:
        conn = session.connection()
        records = [_record("task", row) for row in self._rows(session, "task")]
        events = _events.read_events(conn)
        if bad := next((e for e in events if e.problem), None):
            raise IntegrityError(f"event {bad.id} ({bad.kind}) of {self.location} cannot be trusted: {bad.problem}; "
                                 "aliases, retirements and tags are not used until you restore the registry from a "
                                 "backup (see `snowhub doctor`)")
        return records, LifecycleState.replay(events)

    def lifecycle(self) -> LifecycleState:
        """The aliases, retired versions, tags, descriptions and evaluations the events say now.

        Raises:
            IntegrityError: an event was edited, or one before the last was deleted.
        """
        with self._reading() as session:
            return self._state(session)[1]

    def snapshot(self) -> tuple[list[TaskRecord], LifecycleState]:
        """Every task row (``seq`` order) and the lifecycle state, read in one snapshot: what a reader that
        resolves references itself (a server's catalog, :func:`snowhub.store.references.resolve`) keeps.

        Raises:
            IntegrityError: an event was edited, or one before the last was deleted.
        """
        with self._reading() as session:
            return self._state(session)

    def change_mark(self) -> tuple[int, int]:
        """``(largest task seq, largest event id)``: one statement of two indexed reads that moves whenever a task
        row or an event is appended, so a reader polls it to know when to read :meth:`snapshot` again."""
        with self._reading() as session:
            seq, event = session.execute(text(_CHANGE_MARK)).one()
        return int(seq or 0), int(event or 0)

    def resolve(self, reference: str | TaskReference, retired: bool = False) -> TaskRecord:
        """The task row that `reference` (``birds``, ``birds@2``, ``birds@staging``) names now, in one snapshot
        (:func:`snowhub.store.references.resolve`; `retired` True lets ``NAME@VERSION`` name a retired one).

        Raises:
            InvalidNameError, TaskNotFoundError: a malformed reference; no such task, version or alias, or a
                retired version. IntegrityError: the events cannot be trusted.
        """
        with self._reading() as session:
            records, state = self._state(session)
        return resolve(records, state, reference, retired, where=f"the hub at {self._layout.root}")

    def get_task(self, name: str) -> TaskRecord:
        """The task that the reference `name` names now (:meth:`resolve`; a retired version is never returned)."""
        return self.resolve(name)

    def versions(self, name: str) -> list[TaskRecord]:
        """Every version of the task called `name`, retired ones included, oldest first (empty if none)."""
        return [r for r in self.tasks() if r.name == name]

    def active_tasks(self) -> list[TaskRecord]:
        """Every task row that is not retired, in ``seq`` order."""
        with self._reading() as session:
            records, state = self._state(session)
        return [r for r in records if not state.is_retired(r.name, r.version)]

    def current_tasks(self) -> list[TaskRecord]:
        """For each task name, the version its bare name resolves to (what is served), in the order the names
        were first added; a name whose every version is retired is left out."""
        with self._reading() as session:
            records, state = self._state(session)
        current = []
        for name in dict.fromkeys(r.name for r in records):
            try:
                current.append(resolve(records, state, TaskReference(name)))
            except TaskNotFoundError:
                continue
        return current

    # -- adding task rows -----------------------------------------------------------------------------

    def add_task(self, record: TaskRecord, new_version: bool = False) -> None:
        """Append a task row in one transaction, with its ``added`` (``version``, ``imported``) event.
        ``record.seq`` may be None (it is then assigned); ``record.version`` is set here.

        `new_version` False: the name must be new (version 1). True: the name must exist; the record becomes
        its next version (1 + the largest), the earlier ones untouched.

        Raises :class:`~snowhub.errors.TaskExistsError` for a taken name without `new_version`,
        :class:`~snowhub.errors.TaskNotFoundError` for a new name with it (the hub is unchanged then),
        :class:`~snowhub.errors.HubNotFoundError` if the hub has no source yet,
        :class:`~snowhub.errors.SnowhubError` if ``record.seq`` is set but is not the next one (another
        process appended meanwhile), and ``ValueError`` if a required field of `record` is None.
        """
        try:
            with self._writing() as session:
                if session.get(SourceRow, 1) is None:
                    raise self._no_source()
                last = session.scalar(text("SELECT max(version) FROM task WHERE name = :name"), {"name": record.name})
                record.version = self._new_version(record.name, last, new_version)
                expected = (session.scalar(text("SELECT max(seq) FROM task")) or 0) + 1
                if record.seq is None:
                    record.seq = expected
                elif record.seq != expected:
                    raise SnowhubError(
                        f"task {record.name!r} was prepared as number {record.seq} but the next is {expected} "
                        "(another process added a task meanwhile); add it again"
                    )
                self._seal(session, record)
                kind = "imported" if record.lineage else "version" if record.version > 1 else "added"
                _events.append(session.connection(), kind, record.name, record.version, {"seq": record.seq})
            crash_point("registry:after-commit")
        except sa_exc.IntegrityError as error:
            # Backstop for the check above; never let a SQL trace reach the user.
            if self._dialect.is_unique_violation(error, "task.name"):
                raise self._task_exists(record.name, None) from None
            raise

    def _new_version(self, name: str, last: int | None, new_version: bool) -> int:
        if last is not None and not new_version:
            raise self._task_exists(name, None)
        if last is None and new_version:
            raise TaskNotFoundError(f"no task named {name!r} to add a version to in {self._layout.root}; "
                                    "add it as a new task (without `new_version`)")
        return 1 if last is None else last + 1

    def _task_exists(self, name: str, seq: int | None) -> TaskExistsError:
        where = f" (task {seq})" if seq is not None else ""
        return TaskExistsError(
            f"a task named {name!r} already exists in {self._layout.root}{where}; tasks are append-only: "
            "choose another name, or train its next version (`new_version`)"
        )

    # -- changes of state: one checked, sealed event each ------------------------------------------

    def append_event(self, kind: str, name: str | None, version: int | None,
                     payload: Mapping[str, Any] | None = None) -> EventRecord:
        """Append one sealed event (e.g. ``evaluated`` with an evaluation's numbers) in its own transaction.

        `name` and `version`, when given, must name a task row (retired or not).

        Raises:
            TaskNotFoundError: no such task or version. IntegrityError: the events cannot be trusted.
            HubReadOnlyError: the registry cannot be written. ValueError: an unknown `kind` (a bug).
        """
        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str | None, int | None, dict]:
            if name is not None:
                pinned = TaskReference(name, version) if version is not None else TaskReference(name)
                resolve(records, state, pinned, retired=True)
            return name, version, dict(payload or {})

        return self._change(kind, check)

    def _change(self, kind: str, check: Any) -> EventRecord:
        """In one writer transaction: the state now → ``check(records, state)`` (raises, or gives the event's
        task, version and payload) → the sealed event."""
        with self._writing() as session:
            records, state = self._state(session)
            task, version, payload = check(records, state)
            event = _events.append(session.connection(), kind, task, version, payload)
            crash_point("registry:before-commit")
        return event

    def set_alias(self, name: str, alias: str, version: int) -> EventRecord:
        """Point `alias` of the task called `name` at `version` (moving it if it points elsewhere).

        Raises:
            InvalidNameError: a bad alias name (``@``, or not starting with a letter) or a reference for `name`.
            TaskNotFoundError: no such task or version, or the version is retired.
        """
        check_alias_name(alias)
        _plain_name(name)

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, int, dict]:
            record = resolve(records, state, TaskReference(name, int(version)))
            previous = state.aliases.get((name, alias))
            moved = {"previous": previous} if previous and previous != record.version else {}
            return name, record.version, {"alias": alias} | moved

        return self._change("alias_set", check)

    def delete_alias(self, name: str, alias: str) -> EventRecord:
        """Remove `alias` of the task called `name` (TaskNotFoundError if it is not set)."""
        check_alias_name(alias)
        _plain_name(name)

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, int, dict]:
            record = resolve(records, state, TaskReference(name, alias=alias))
            return name, record.version, {"alias": alias}

        return self._change("alias_deleted", check)

    def retire(self, reference: str) -> EventRecord:
        """Take ``NAME@VERSION`` out of service: not served, not listed without ``--all``; its row and files
        stay, and ``verify-forgetting`` still checks it.

        Raises:
            InvalidNameError: no version pinned. TaskNotFoundError: no such version. ConfigError: retired
            already, or an alias points to it (move or delete the alias first).
        """
        ref = _pinned(reference, "retire")

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, int, dict]:
            resolve(records, state, ref, retired=True)
            if state.is_retired(ref.name, ref.version):
                raise ConfigError(f"{ref} is retired already")
            if held := [a for a, v in state.aliases_of(ref.name).items() if v == ref.version]:
                raise ConfigError(f"alias {held[0]!r} of {ref.name!r} points to version {ref.version}; move it "
                                  f"(snowhub alias set {ref.name} {held[0]} N) or delete it first")
            return ref.name, ref.version, {}

        return self._change("retired", check)

    def restore(self, reference: str) -> EventRecord:
        """Put a retired ``NAME@VERSION`` back in service (ConfigError if it is not retired)."""
        ref = _pinned(reference, "restore")

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, int, dict]:
            resolve(records, state, ref, retired=True)
            if not state.is_retired(ref.name, ref.version):
                raise ConfigError(f"{ref} is not retired; there is nothing to restore")
            return ref.name, ref.version, {}

        return self._change("restored", check)

    def tag(self, name: str, tag: str) -> EventRecord:
        """Set the tag ``KEY=VALUE`` on the task called `name` (``KEY=`` removes it); tags belong to the task,
        all its versions. Raises ConfigError for a malformed `tag` (:func:`parse_tag`), TaskNotFoundError."""
        key, value = parse_tag(tag)
        _plain_name(name)

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, None, dict]:
            _exists(records, name)
            return name, None, {"key": key, "value": value}

        return self._change("tagged", check)

    def describe(self, name: str, description: str) -> EventRecord:
        """Set the description of the task called `name` (ConfigError over 4,000 characters; TaskNotFoundError)."""
        _plain_name(name)
        if len(description) > _MAX_DESCRIPTION:
            raise ConfigError(f"`description` has {len(description)} characters; give at most {_MAX_DESCRIPTION}")

        def check(records: list[TaskRecord], state: LifecycleState) -> tuple[str, None, dict]:
            _exists(records, name)
            return name, None, {"description": description}

        return self._change("described", check)


def _plain_name(name: str) -> None:
    """Aliases, tags and descriptions belong to a task name, not to a reference (InvalidNameError)."""
    if "@" in str(name):
        raise InvalidNameError(f"{name!r}: give the task's name without '@' (aliases, tags and descriptions "
                               "belong to the task, not to one version)")
    check_task_name(name)


def _pinned(reference: str, verb: str) -> TaskReference:
    ref = parse_reference(reference)
    if ref.version is None:
        raise InvalidNameError(f"give the version to {verb}: {ref.name}@VERSION (e.g. {ref.name}@1)")
    return ref


def _exists(records: list[TaskRecord], name: str) -> None:
    if not any(r.name == name for r in records):
        resolve(records, LifecycleState(), TaskReference(name))  # raises, naming the known tasks
