"""What the hub needs from a registry, whatever database holds it (as MLflow's ``AbstractStore``).

Records go in and come out as the dataclasses of :mod:`snowhub.store.records`; no ORM row, engine or SQL
leaves ``snowhub.store``. :class:`snowhub.store.Registry` is the one implementation: SQLAlchemy behind a
database URL (:mod:`snowhub.store.url`), with the dialect-specific parts in :mod:`snowhub.store.sqlite`
and :mod:`snowhub.store.postgresql`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from snowhub.store.events import LifecycleState
from snowhub.store.files import HubLayout
from snowhub.store.records import EventRecord, RegistryAudit, SourceRecord, TaskRecord

if TYPE_CHECKING:
    from snowhub.progress import Progress


class RegistryStore(ABC):
    """A hub's registry: one source record and an append-only list of task records, every row sealed.

    Tasks are append-only: there is deliberately no way to update or delete a task or the source, because
    the no-forgetting guarantee rests on every recorded delta staying exactly as it was trained. Every
    method raises a :class:`~snowhub.errors.SnowhubError` (one line) when the database fails.
    """

    @property
    @abstractmethod
    def layout(self) -> HubLayout:
        """The hub directory that holds the files the records refer to."""

    @property
    @abstractmethod
    def read_only(self) -> bool:
        """Whether this process may only read (read-only hub directory or registry)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the registry lives, password hidden (``sqlite:///…/hub.db``, ``postgresql+psycopg://…``)."""

    @abstractmethod
    def close(self) -> None:
        """Release the database connections; the registry must not be used afterwards."""

    # -- records ------------------------------------------------------------------------------------

    @abstractmethod
    def source(self) -> SourceRecord:
        """The source record (HubNotFoundError if ``init`` never finished)."""

    @abstractmethod
    def set_source(self, record: SourceRecord) -> None:
        """Record the source, once (HubExistsError after that). Fills in ``created_at`` and the seal."""

    @abstractmethod
    def tasks(self) -> list[TaskRecord]:
        """Every task row (every version, retired ones included) in ``seq`` order."""

    @abstractmethod
    def get_task(self, name: str) -> TaskRecord:
        """The task a reference names now (:meth:`resolve`; TaskNotFoundError naming the known ones)."""

    @abstractmethod
    def resolve(self, reference: str, retired: bool = False) -> TaskRecord:
        """The task row ``birds``, ``birds@2`` or ``birds@staging`` names now (:mod:`snowhub.store.references`)."""

    @abstractmethod
    def active_tasks(self) -> list[TaskRecord]:
        """Every task row that is not retired, in ``seq`` order."""

    @abstractmethod
    def current_tasks(self) -> list[TaskRecord]:
        """For each task name, the version its bare name resolves to (what is served)."""

    @abstractmethod
    def snapshot(self) -> tuple[list[TaskRecord], LifecycleState]:
        """Every task row and the lifecycle state, read in one snapshot (a server resolves references in it)."""

    @abstractmethod
    def change_mark(self) -> tuple[int, int]:
        """``(largest task seq, largest event id)``: moves whenever a task row or an event is appended."""

    @abstractmethod
    def has_task(self, name: str) -> bool:
        """Whether a task of that name exists (any version)."""

    @abstractmethod
    def events(self, name: str | None = None) -> list[EventRecord]:
        """Every lifecycle event in order (of task `name` only, if given), each with its problem."""

    @abstractmethod
    def append_event(self, kind: str, name: str | None, version: int | None,
                     payload: dict | None = None) -> EventRecord:
        """Append one sealed event in its own transaction (:mod:`snowhub.store.events`)."""

    @abstractmethod
    def versions(self, name: str) -> list[TaskRecord]:
        """Every version of task `name`, retired ones included, oldest first."""

    @abstractmethod
    def lifecycle(self) -> LifecycleState:
        """Aliases, retired versions, tags, descriptions, evaluations: the state the events give now."""

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: int) -> EventRecord:
        """Point `alias` of task `name` at `version` (one checked event)."""

    @abstractmethod
    def delete_alias(self, name: str, alias: str) -> EventRecord:
        """Remove `alias` of task `name`."""

    @abstractmethod
    def retire(self, reference: str) -> EventRecord:
        """Take ``NAME@VERSION`` out of service."""

    @abstractmethod
    def restore(self, reference: str) -> EventRecord:
        """Put a retired ``NAME@VERSION`` back in service."""

    @abstractmethod
    def tag(self, name: str, tag: str) -> EventRecord:
        """Set ``KEY=VALUE`` on task `name` (``KEY=`` removes it)."""

    @abstractmethod
    def describe(self, name: str, description: str) -> EventRecord:
        """Set the description of task `name`."""

    @abstractmethod
    def next_seq(self) -> int:
        """The ``seq`` the next task gets."""

    @abstractmethod
    def add_task(self, record: TaskRecord, new_version: bool = False) -> None:
        """Append one task in one transaction (TaskExistsError for a taken name unless `new_version`; the
        registry is then unchanged)."""

    # -- seals and checks ---------------------------------------------------------------------------

    @abstractmethod
    def check_record(self, record: SourceRecord | TaskRecord) -> None:
        """IntegrityError unless the record's row still matches its seal."""

    @abstractmethod
    def checked_tasks(self) -> list[tuple[TaskRecord, str | None]]:
        """Every task with the message of its broken seal (None when it holds), from one query."""

    @abstractmethod
    def audit(self) -> RegistryAudit:
        """Every row, each with its record (None if a value does not parse) and why its seal does not hold
        (None when it does), in one transaction: for the doctor and ``registry copy``, which keep going past
        a tampered row."""

    @abstractmethod
    def integrity_check(self) -> list[str]:
        """The database's own soundness check: an empty list when nothing is wrong, else one line per finding,
        naming the check (``SQLite integrity check: …``)."""

    @abstractmethod
    def revision(self) -> str | None:
        """The schema revision recorded in the registry."""

    # -- the writer lock ----------------------------------------------------------------------------

    @abstractmethod
    def writer_lock(self, wait: bool = True, timeout: float | None = None,
                    progress: Progress | None = None) -> AbstractContextManager[None]:
        """The hub's exclusive writer lock, held for a ``with`` block (HubLockedError when not had)."""

    @abstractmethod
    def lock_holder(self) -> str | None:
        """Who holds the writer lock now, or None. Never waits."""
