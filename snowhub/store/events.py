"""A task's life as sealed, append-only events (``task_event``, schema 0007), and the state derived from them.

Every change of state that is not a new task row (an alias set or deleted, a version retired or restored, a
tag, a description, an evaluation, the registry copied) is one new row here, and so is every task added
(``added``, ``version``, ``imported``), in the same transaction as its task row. Nothing is ever updated:
which version an alias points to, which versions are retired, a task's tags and description are *derived*
by replaying the events in ``id`` order (:class:`LifecycleState`).

Each row is sealed like a task record (:mod:`snowhub.store.integrity`), and the seal covers
``previous_sha256``, the seal of the event before it; ids run 1, 2, … without a gap. So an edited event
breaks its seal, and a deleted or reordered one breaks the chain (:func:`chain_problems`): ``snowhub doctor``
reports both, and the state is not derived from events that cannot be trusted. Deleting the newest events
(the tail) leaves a shorter chain that still holds: as for task rows, the seal is not a signature.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from snowhub.store.integrity import decoded, record_problem, seal
from snowhub.store.models import TaskEventRow, utcnow
from snowhub.store.records import EventRecord, RecordAudit

EVENT_KINDS = ("added", "version", "alias_set", "alias_deleted", "retired", "restored", "tagged", "described",
               "evaluated", "imported", "registry_copied")
"""Every kind of event, as stored in ``task_event.kind``."""

PRODUCTION = "production"
"""The alias a bare task name follows when it is set (``birds`` = ``birds@production``)."""


def who() -> tuple[str, str]:
    """``(user, host)`` recording an event: the login name (``unknown`` when there is none) and the host name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        user = "unknown"
    return user or "unknown", socket.gethostname() or "unknown"


def _record(raw: Mapping[str, object], problem: str | None) -> EventRecord:
    values = decoded("task_event", raw)
    return EventRecord(int(values["id"]), values["at"], str(values["username"]), str(values["hostname"]),
                       str(values["kind"]), values["task"], values["version"], dict(values["payload"] or {}),
                       values.get("record_sha256"), problem)


def chain_problems(rows: list[Mapping[str, object]]) -> dict[int, str]:
    """Event id → what is wrong with it (its seal, a gap before it, or a chain link that does not hold).

    `rows` are raw ``task_event`` rows in ``id`` order (one transaction). Empty when every event can be trusted.
    """
    problems: dict[int, str] = {}
    previous: Mapping[str, object] | None = None
    for expected, row in enumerate(rows, 1):
        key = int(row["id"])
        if problem := record_problem(row, "task_event"):
            problems[key] = problem
        elif key != expected:
            gone = f"event {expected} before it is" if key == expected + 1 else f"events {expected}-{key - 1} before it are"
            problems[key] = f"{gone} gone (ids must run without a gap)"
        elif row.get("previous_sha256") != (None if previous is None else previous.get("record_sha256")):
            problems[key] = "the event before it was changed, deleted or replaced (previous_sha256 does not match)"
        previous = row
    return problems


def audit_events(rows: list[Mapping[str, object]]) -> list[RecordAudit]:
    """Raw ``task_event`` rows (``id`` order) as :class:`~snowhub.store.records.RecordAudit` s: key = id, name =
    kind, the record None where a value does not parse, the problem of its seal or of the chain."""
    problems = chain_problems(rows)
    audits = []
    for row in rows:
        key = int(row["id"])
        try:
            record = _record(row, problems.get(key))
        except (ValueError, TypeError):
            record = None
        audits.append(RecordAudit(key, str(row.get("kind")), record, problems.get(key)))
    return audits


def read_events(conn: Connection) -> list[EventRecord]:
    """Every event in ``id`` order, each with its :attr:`~EventRecord.problem` (None when it can be trusted).

    Raises ``ValueError`` for a value that does not parse (the caller turns it into an IntegrityError).
    """
    rows = [dict(r) for r in conn.execute(text('SELECT * FROM "task_event" ORDER BY id')).mappings()]
    problems = chain_problems(rows)
    return [_record(row, problems.get(int(row["id"]))) for row in rows]


def append(conn: Connection, kind: str, task: str | None, version: int | None,
           payload: Mapping[str, Any] | None = None) -> EventRecord:
    """Insert one sealed event in the caller's open writer transaction on `conn` (chained to the last one).

    Raises ``ValueError`` for an unknown `kind` (a bug, not a user error).
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    last = conn.execute(text('SELECT id, record_sha256 FROM "task_event" ORDER BY id DESC LIMIT 1')).first()
    key = 1 if last is None else int(last[0]) + 1
    user, host = who()
    values = {"id": key, "at": utcnow(), "username": user, "hostname": host, "kind": kind, "task": task,
              "version": version, "payload": dict(payload or {}),
              "previous_sha256": None if last is None else last[1]}
    conn.execute(TaskEventRow.__table__.insert().values(**values))
    digest = seal(conn, "task_event", key)
    return EventRecord(key, values["at"], user, host, kind, task, version, values["payload"], digest)


@dataclass
class LifecycleState:
    """What the events say now: derived by replaying them in order, never stored.

    Attributes:
        aliases: ``(task, alias)`` → the version it points to.
        retired: the ``(task, version)`` pairs out of service.
        tags: task → ``{key: value}``. descriptions: task → its latest description.
        evaluations: every ``evaluated`` event, oldest first.
    """

    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    retired: set[tuple[str, int]] = field(default_factory=set)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    evaluations: list[EventRecord] = field(default_factory=list)

    @classmethod
    def replay(cls, events: list[EventRecord]) -> LifecycleState:
        """The state after `events` (in ``id`` order); an event of a kind that changes no state is skipped."""
        state = cls()
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: EventRecord) -> None:
        """Change the state as `event` says."""
        name, version, payload = event.task, event.version, event.payload
        if event.kind == "alias_set":
            self.aliases[name, payload["alias"]] = int(version)
        elif event.kind == "alias_deleted":
            self.aliases.pop((name, payload["alias"]), None)
        elif event.kind == "retired":
            self.retired.add((name, int(version)))
        elif event.kind == "restored":
            self.retired.discard((name, int(version)))
        elif event.kind == "tagged":
            tags = self.tags.setdefault(name, {})
            if payload.get("value") is None:
                tags.pop(payload["key"], None)
            else:
                tags[payload["key"]] = payload["value"]
        elif event.kind == "described":
            self.descriptions[name] = payload["description"]
        elif event.kind == "evaluated":
            self.evaluations.append(event)

    def aliases_of(self, name: str) -> dict[str, int]:
        """Alias → version, for the task called `name` (sorted by alias)."""
        return dict(sorted((alias, v) for (task, alias), v in self.aliases.items() if task == name))

    def is_retired(self, name: str, version: int) -> bool:
        """Whether ``name@version`` is out of service."""
        return (name, version) in self.retired
