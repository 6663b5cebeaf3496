"""The hub registry: the only way the rest of snowhub reads or writes the registry database.

One SQLAlchemy implementation of :class:`~snowhub.store.interface.RegistryStore` behind a database URL
(:mod:`snowhub.store.url`): ``sqlite:///<hub>/hub.db`` by default, or PostgreSQL. What is specific to one
database lives in :mod:`snowhub.store.sqlite` or :mod:`snowhub.store.postgresql`; opening and creating are
in :mod:`snowhub.store.opening`. Reads decode the rows themselves (:func:`snowhub.store.integrity.decoded`),
so a record and its seal check come from one query.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from snowhub.errors import HubExistsError, HubNotFoundError, HubReadOnlyError, IntegrityError, SnowhubError
from snowhub.faults import crash_point
from snowhub.store.database import current_revision, dialect_for, session_factory
from snowhub.store.files import HubLayout
from snowhub.store.events import audit_events
from snowhub.store.integrity import KEYS, decoded, record_problem, seal
from snowhub.store.interface import RegistryStore
from snowhub.store.lifecycle import TaskLifecycle
from snowhub.store.models import HubRow, SourceRow, TaskEventRow, TrustedKeyRow
from snowhub.store.records import RecordAudit, RegistryAudit, SourceRecord, TaskRecord
from snowhub.store.rows import record_from_raw as _record
from snowhub.store.rows import require_complete as _require_complete
from snowhub.store.rows import table_key as _table_key
from snowhub.store.rows import to_row as _to_row
from snowhub.store.url import default_url, in_directory, redacted

if TYPE_CHECKING:
    from snowhub.progress import Progress


def _writable(layout: HubLayout) -> bool:
    """Whether this process may change the hub (its directory and its registry file ``hub.db``)."""
    return os.access(layout.root, os.W_OK) and os.access(layout.db_path, os.W_OK)


def _audit(table: str, row: dict[str, object]) -> RecordAudit:
    problem = record_problem(row, table)
    try:
        record = _record(table, row)
    except ValueError:  # a JSON or timestamp value that does not parse: record_problem says which
        record = None
    return RecordAudit(int(row[KEYS[table]]), row.get("name"), record, problem)


class Registry(TaskLifecycle, RegistryStore):
    """A hub's registry: its source model and its append-only list of tasks.

    Get one with :meth:`create` or :meth:`open`, and :meth:`close` it (or use it as a context manager).
    Records returned are detached snapshots: changing them changes nothing in the hub. Writers hold
    :meth:`writer_lock`; the registry's own writes are single transactions.
    """

    def __init__(self, layout: HubLayout, engine: Engine, read_only: bool = False, url: URL | None = None) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._layout = layout
        self._engine = engine
        self._read_only = read_only
        self._url = url if url is not None else default_url(layout)
        self._dialect: ModuleType = dialect_for(self._url)
        self._in_directory = in_directory(self._url, layout)
        # Messages name the SQLite file as before; a server registry by its URL (password hidden).
        sqlite = self._dialect.NAME == "sqlite"
        self._location = str(Path(self._url.database).absolute()) if sqlite else redacted(self._url)
        self._read = session_factory(self._dialect.read_engine(engine))
        self._write = session_factory(self._dialect.write_engine(engine))

    # -- opening -----------------------------------------------------------------------------------

    @staticmethod
    def writable(layout: HubLayout) -> bool:
        """Whether this process may change the hub directory and its ``hub.db``."""
        return _writable(layout)

    @classmethod
    def create(cls, root: Path, url: str | URL | None = None) -> Registry:
        """Create a new, empty registry for the hub directory ``root`` (see :func:`snowhub.store.opening.create`)."""
        from snowhub.store.opening import create

        return create(cls, Path(root), url)

    @classmethod
    def open(cls, root: Path | None = None, url: str | URL | None = None, migrate: bool = True,
             read_only: bool = False) -> Registry:
        """Open the registry of the hub at ``root`` (see :func:`snowhub.store.opening.open_registry`);
        ``read_only=True``: never write, even where it could (``snowhub serve``)."""
        from snowhub.store.opening import open_registry

        return open_registry(cls, None if root is None else Path(root), url, migrate, read_only)

    @property
    def layout(self) -> HubLayout:
        """Where this hub keeps its files."""
        return self._layout

    @property
    def read_only(self) -> bool:
        """Whether the hub was opened read-only (its directory or registry cannot be written)."""
        return self._read_only

    @property
    def url(self) -> str:
        """The registry's URL, password hidden."""
        return redacted(self._url)

    @property
    def dialect_name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect.NAME

    @property
    def in_directory(self) -> bool:
        """Whether the registry is the hub directory's own ``hub.db``."""
        return self._in_directory

    @property
    def location(self) -> str:
        """The registry as messages name it: the SQLite file's path, or the URL without its password (:attr:`url`
        is always the URL)."""
        return self._location

    def close(self) -> None:
        """Release the database connections. The registry must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self._layout.root)!r}, {self.url!r})"

    # -- sessions ----------------------------------------------------------------------------------

    def database_error(self, error: BaseException) -> SnowhubError:
        """`error` from the database as one actionable line."""
        return self._dialect.database_error(self._location, error, url=self._url)

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[Connection]:
        """A connection of its own (e.g. for a session advisory lock); database errors become one line."""
        try:
            with self._engine.connect() as conn:
                yield conn.execution_options(isolation_level="AUTOCOMMIT") if autocommit else conn
        except sa_exc.DatabaseError as error:
            raise self.database_error(error) from None

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with self._read() as session, session.begin():
                yield session
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DatabaseError as error:  # locked past the busy timeout, I/O error, corrupt file, server gone
            raise self.database_error(error) from None
        except ValueError as error:  # a stored value that does not parse (JSON, datetime): an edited row
            raise IntegrityError(
                f"{self._location} holds a malformed record ({' '.join(str(error).split())[:120]}); "
                "restore it from a backup (`snowhub doctor` lists what is wrong)"
            ) from None

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        if self._read_only:
            raise HubReadOnlyError(f"the hub at {self._layout.root} is read-only; make it writable to change it")
        # SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction advisory lock. Checks made inside the
        # transaction still hold when it commits.
        try:
            with self._write() as session, session.begin():
                yield session
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DatabaseError as error:  # locked past the busy timeout, disk full, read-only
            raise self.database_error(error) from None

    def _rows(self, session: Session, table: str, where: str = "", **params: object) -> list[dict[str, object]]:
        sql = f'SELECT * FROM "{table}" {where} ORDER BY "{KEYS[table]}"'
        return [dict(r) for r in session.connection().execute(text(sql), params).mappings()]

    @staticmethod
    def _seal(session: Session, record: SourceRecord | TaskRecord) -> None:
        """Insert `record` and store its seal in the same (still open) transaction; fills in the record's
        ``created_at`` and ``record_sha256``."""
        row = _to_row(record)
        _require_complete(row)
        session.add(row)
        session.flush()
        table, key = _table_key(record)
        set_committed_value(row, "record_sha256", seal(session.connection(), table, key))
        record.created_at, record.record_sha256 = row.created_at, row.record_sha256
        crash_point("registry:before-commit")

    # -- record seals ------------------------------------------------------------------------------

    def audit(self) -> RegistryAudit:
        """Every sealed row, in one transaction, each with its record (None if a value does not parse) and why
        its seal does not hold; for checkers that must keep going past a tampered row."""
        with self._reading() as session:
            sources, tasks = self._rows(session, "source"), self._rows(session, "task")
            events = self._rows(session, "task_event")
        return RegistryAudit(_audit("source", sources[0]) if sources else None, [_audit("task", r) for r in tasks],
                             audit_events(events))

    def integrity_check(self) -> list[str]:
        """The database's soundness check (SQLite: ``PRAGMA integrity_check``; PostgreSQL: the schema is snowhub's)."""
        with self._reading() as session:
            return self._dialect.integrity_check(session.connection())

    def revision(self) -> str | None:
        """The schema revision recorded in the registry."""
        try:
            return current_revision(self._engine)
        except sa_exc.DatabaseError as error:
            raise self.database_error(error) from None

    def untrusted(self, record: SourceRecord | TaskRecord, problem: str) -> str:
        """The message for a record whose seal does not hold."""
        what = "the source model" if isinstance(record, SourceRecord) else f"task {record.name!r}"
        return (f"the registry record of {what} cannot be trusted: {problem}; it is not used until you restore "
                f"{self._location} from a backup (see `snowhub doctor`)")

    def check_record(self, record: SourceRecord | TaskRecord) -> None:
        """Raise :class:`~snowhub.errors.IntegrityError` unless `record`'s registry row matches its seal."""
        table, key = _table_key(record)
        with self._reading() as session:
            rows = self._rows(session, table, f'WHERE "{KEYS[table]}" = :key', key=key)
        if problem := record_problem(rows[0] if rows else None, table):
            raise IntegrityError(self.untrusted(record, problem))

    # -- source ------------------------------------------------------------------------------------

    def _no_source(self) -> HubNotFoundError:
        return HubNotFoundError(
            f"the hub at {self._layout.root} has no source model (its `snowhub init` never finished); "
            "remove the directory and run `snowhub init --source NAME` again"
        )

    def source(self) -> SourceRecord:
        """The hub's source model. Raises :class:`~snowhub.errors.HubNotFoundError` if init never finished."""
        with self._reading() as session:
            rows = self._rows(session, "source")
            if not rows:
                raise self._no_source()
            return _record("source", rows[0])

    def set_source(self, record: SourceRecord) -> None:
        """Record the hub's source model. Allowed once per hub.

        Raises :class:`~snowhub.errors.HubExistsError` if a source is already recorded, and
        ``ValueError`` if a required field of `record` is None.
        """
        try:
            with self._writing() as session:
                existing = session.get(SourceRow, 1)
                if existing is not None:
                    raise HubExistsError(
                        f"the hub at {self._layout.root} already has its source model ({existing.name}); "
                        "a hub's source never changes, create a new hub for another source"
                    )
                self._seal(session, record)
        except sa_exc.IntegrityError:
            # Only reachable by bypassing the check above (another writer in between).
            raise HubExistsError(
                f"the hub at {self._layout.root} already has its source model; "
                "create a new hub for another source"
            ) from None

    def hub_directory(self) -> str | None:
        """The hub directory recorded by ``init`` or ``registry copy`` (None for a registry made before 0005)."""
        with self._reading() as session:
            row = session.get(HubRow, 1)
            return None if row is None else row.directory

    # -- copying ---------------------------------------------------------------------------------

    def copy_in(self, source: SourceRecord, tasks: list[TaskRecord], events: list[dict[str, object]] = (),
                keys: list[dict[str, object]] = ()) -> None:
        """Insert records exactly as another registry holds them, seals and times included, in one transaction;
        `events` and `keys` are the other registry's raw ``task_event`` and ``trusted_key`` rows
        (:meth:`raw_events`, :meth:`raw_keys`).

        For :mod:`snowhub.store.copy` into a new, empty registry only (the seals are not recomputed: they must
        hold as they are). Raises HubExistsError if this registry already has a source.
        """
        with self._writing() as session:
            if session.get(SourceRow, 1) is not None:
                raise HubExistsError(f"{self._location} already holds a hub; copy into an empty database")
            for record in (source, *tasks):
                session.add(_to_row(record))
            session.flush()
            for table, rows in ((TaskEventRow.__table__, events), (TrustedKeyRow.__table__, keys)):
                for row in rows:
                    session.execute(table.insert().values(**decoded(table.name, row)))

    def raw_events(self) -> list[dict[str, object]]:
        """Every ``task_event`` row as the database returns it, in ``id`` order (for :meth:`copy_in`)."""
        with self._reading() as session:
            return self._rows(session, "task_event")

    def raw_keys(self) -> list[dict[str, object]]:
        """Every ``trusted_key`` row as the database returns it, in ``seq`` order (for :meth:`copy_in`)."""
        with self._reading() as session:
            return self._rows(session, "trusted_key")

    # -- the writer lock ---------------------------------------------------------------------------

    def writer_lock(self, wait: bool = True, timeout: float | None = None,
                    progress: Progress | None = None) -> AbstractContextManager[None]:
        """The hub's writer lock: the file lock with SQLite, a server advisory lock with PostgreSQL.

        See :func:`snowhub.store.lock.file_lock` for the arguments and errors.
        """
        return self._dialect.writer_lock(self, wait, timeout, progress)

    def lock_holder(self) -> str | None:
        """Who holds the writer lock now (``"pid N"``, ``"pid N on HOST"``), or None. Never waits."""
        return self._dialect.lock_holder(self)
