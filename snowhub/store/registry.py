"""The hub registry: the only way the rest of snowhub reads or writes ``hub.db``.

Tasks are append-only: there is deliberately no API to update or delete a task or the source, because the
no-forgetting guarantee rests on every recorded delta staying exactly as it was trained.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from snowhub.errors import (
    HubExistsError,
    HubLockedError,
    HubNotFoundError,
    IntegrityError,
    SnowhubError,
    TaskExistsError,
    TaskNotFoundError,
)
from snowhub.faults import crash_point
from snowhub.store.database import (
    BUSY_TIMEOUT_S,
    current_revision,
    open_engine,
    session_factory,
    upgrade,
    write_engine,
)
from snowhub.store.files import HubLayout, HubReadOnlyError, HubWriteError, write_error
from snowhub.store.integrity import KEYS, raw_row, record_problem, seal
from snowhub.store.models import Base, SourceRow, TaskRow
from snowhub.store.records import SourceRecord, TaskRecord, field_names

_MAX_LISTED = 20


def _require_complete(row: Base) -> None:
    """Refuse a row with a required field left as None (a bug in the caller, not a user error)."""
    missing = [
        column.key
        for column in inspect(type(row)).columns
        if not column.nullable and column.default is None and getattr(row, column.key) is None
    ]
    if missing:
        raise ValueError(f"{type(row).__name__} is missing required fields: {', '.join(missing)}")


def _to_record(row: SourceRow | TaskRow) -> SourceRecord | TaskRecord:
    record_type = SourceRecord if isinstance(row, SourceRow) else TaskRecord
    return record_type(**{name: getattr(row, name) for name in field_names(record_type)})


def _to_row(record: SourceRecord | TaskRecord) -> SourceRow | TaskRow:
    row_type = SourceRow if isinstance(record, SourceRecord) else TaskRow
    values = {name: getattr(record, name) for name in field_names(type(record))}
    return row_type(**{k: v for k, v in values.items() if k not in ("created_at", "record_sha256") or v is not None})


def _table_key(record: SourceRecord | TaskRecord) -> tuple[str, int]:
    return ("source", 1) if isinstance(record, SourceRecord) else ("task", record.seq)


def database_error(db_path: Path, error: BaseException) -> SnowhubError:
    """A one-line, actionable error for an SQLite failure (never a trace with SQL in it)."""
    text = " ".join(str(getattr(error, "orig", None) or error).split())
    low = text.lower()
    if "locked" in low or "busy" in low:
        return HubLockedError(f"{db_path} stayed locked by another process for over {BUSY_TIMEOUT_S:.0f} s "
                              f"({text}); retry when it is done")
    if "readonly" in low or "read-only" in low:
        return HubReadOnlyError(f"cannot write {db_path} ({text}); the hub is read-only, make it writable")
    if "full" in low or "i/o error" in low:
        return HubWriteError(f"cannot read or write {db_path} ({text}); free some disk space, check the disk, "
                             "then retry")
    if "unable to open" in low:
        return SnowhubError(f"cannot open {db_path} ({text}); check that the hub's files are readable and writable")
    return SnowhubError(f"{db_path} is not a readable snowhub registry ({text}); restore it from a backup")


def _writable(layout: HubLayout) -> bool:
    """Whether this process may change the hub (its directory and its registry file)."""
    return os.access(layout.root, os.W_OK) and os.access(layout.db_path, os.W_OK)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


class Registry:
    """A hub's registry: its source model and its append-only list of tasks.

    Get one with :meth:`create` or :meth:`open`, and :meth:`close` it (or use it as a context manager).
    Rows returned are detached snapshots: changing them changes nothing in the hub. Writers should hold
    :func:`snowhub.store.lock.writer_lock`; the registry's own writes are single SQLite transactions.
    """

    def __init__(self, layout: HubLayout, engine: Engine, read_only: bool = False) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._layout = layout
        self._engine = engine
        self._read_only = read_only
        self._read = session_factory(engine)
        self._write = session_factory(write_engine(engine))

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path) -> Registry:
        """Create a new, empty hub at ``root`` (directories and a migrated ``hub.db``).

        ``root`` may exist as a directory. Raises :class:`~snowhub.errors.HubExistsError` if it already
        holds a ``hub.db``, and :class:`~snowhub.errors.SnowhubError` if ``root`` is a file.
        """
        layout = HubLayout(Path(root))
        if layout.root.exists() and not layout.root.is_dir():
            raise SnowhubError(f"{layout.root} is a file, not a directory; choose a directory for the hub")
        exists = HubExistsError(
            f"a snowhub hub already exists at {layout.root}; use it, or choose another directory"
        )
        if layout.db_path.exists():
            raise exists
        try:
            for directory in (layout.root, layout.source_dir, layout.tasks_dir, layout.staging_dir):
                directory.mkdir(parents=True, exist_ok=True)
            # O_EXCL decides the race between two concurrent `init`s; SQLite treats an empty file as an
            # empty database.
            os.close(os.open(layout.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise exists from None
        except OSError as error:
            raise write_error(Path(error.filename or layout.root), error) from None
        engine = open_engine(layout.db_path)
        try:
            upgrade(engine)
        except BaseException as error:
            engine.dispose()
            # Leave no half-made hub.db behind, so that `init` can simply be run again.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{layout.db_path}{suffix}").unlink(missing_ok=True)
            if isinstance(error, sa_exc.DatabaseError):
                raise database_error(layout.db_path, error) from None
            raise
        return cls(layout, engine)

    @classmethod
    def open(cls, root: Path, read_only: bool = False) -> Registry:
        """Open the hub at ``root``, first migrating its registry if it was written by an older snowhub.

        ``read_only=True`` opens it without writing even where it could (``snowhub serve``): SQLite opens
        ``hub.db`` read-only and still sees what writers in other processes commit (WAL readers).

        Raises :class:`~snowhub.errors.HubNotFoundError` if there is no hub there (or ``root`` is a file),
        :class:`~snowhub.errors.HubVersionError` if a newer snowhub wrote it, and
        :class:`~snowhub.errors.SnowhubError` if ``hub.db`` is not a readable database.
        """
        layout = HubLayout(Path(root))
        if layout.root.exists() and not layout.root.is_dir():
            raise HubNotFoundError(
                f"{layout.root} is a file, not a snowhub hub directory; pass the hub's directory"
            )
        if not layout.db_path.is_file():
            raise HubNotFoundError(
                f"no snowhub hub at {layout.root}; create one with `snowhub init --source NAME`"
            )
        # A hub on read-only storage (or without write permission) can still be listed and served.
        read_only = read_only or not _writable(layout)
        engine = open_engine(layout.db_path, read_only=read_only)
        try:
            upgrade(engine, read_only=read_only)
        except sa_exc.DatabaseError as error:
            engine.dispose()
            raise database_error(layout.db_path, error) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(layout, engine, read_only)

    @property
    def layout(self) -> HubLayout:
        """Where this hub keeps its files."""
        return self._layout

    @property
    def read_only(self) -> bool:
        """Whether the hub was opened read-only (its directory or registry cannot be written)."""
        return self._read_only

    def close(self) -> None:
        """Release the database connections. The registry must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self._layout.root)!r})"

    # -- sessions ----------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with self._read() as session, session.begin():
                yield session
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DatabaseError as error:  # locked past the busy timeout, I/O error, corrupt file
            raise database_error(self._layout.db_path, error) from None
        except ValueError as error:  # a stored value that does not parse (JSON, datetime): an edited row
            raise IntegrityError(
                f"{self._layout.db_path} holds a malformed record ({' '.join(str(error).split())[:120]}); "
                "restore it from a backup (`snowhub doctor` lists what is wrong)"
            ) from None

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        if self._read_only:
            raise HubReadOnlyError(f"the hub at {self._layout.root} is read-only; make it writable to change it")
        # BEGIN IMMEDIATE: checks made inside the transaction still hold when it commits.
        try:
            with self._write() as session, session.begin():
                yield session
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DatabaseError as error:  # locked past the busy timeout, disk full, read-only
            raise database_error(self._layout.db_path, error) from None

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

    def raw_rows(self, table: str) -> list[dict[str, object]]:
        """Every row of ``source`` or ``task`` exactly as SQLite stores it (JSON as text), in key order.

        For checkers that must keep going where a tampered row would not load as an ORM object.
        """
        if table not in KEYS:
            raise ValueError(f"unknown table {table!r}")
        with self._reading() as session:
            result = session.connection().execute(text(f'SELECT * FROM "{table}" ORDER BY "{KEYS[table]}"'))
            return [dict(row) for row in result.mappings()]

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check``: an empty list when the database file is sound."""
        with self._reading() as session:
            lines = [str(r[0]) for r in session.connection().exec_driver_sql("PRAGMA integrity_check")]
        return [] if lines == ["ok"] else lines

    def revision(self) -> str | None:
        """The schema revision recorded in ``hub.db``."""
        try:
            return current_revision(self._engine)
        except sa_exc.DatabaseError as error:
            raise database_error(self._layout.db_path, error) from None

    def check_record(self, record: SourceRecord | TaskRecord) -> None:
        """Raise :class:`~snowhub.errors.IntegrityError` unless `record`'s registry row matches its seal."""
        table, key = _table_key(record)
        with self._reading() as session:
            problem = record_problem(raw_row(session.connection(), table, key), table)
        if problem:
            what = "the source model" if table == "source" else f"task {record.name!r}"
            raise IntegrityError(f"the registry record of {what} cannot be trusted: {problem}; it is not used "
                                 f"until you restore {self._layout.db_path} from a backup (see `snowhub doctor`)")

    # -- source ------------------------------------------------------------------------------------

    def _no_source(self) -> HubNotFoundError:
        return HubNotFoundError(
            f"the hub at {self._layout.root} has no source model (its `snowhub init` never finished); "
            "remove the directory and run `snowhub init --source NAME` again"
        )

    def source(self) -> SourceRecord:
        """The hub's source model. Raises :class:`~snowhub.errors.HubNotFoundError` if init never finished."""
        with self._reading() as session:
            row = session.get(SourceRow, 1)
            if row is None:
                raise self._no_source()
            return _to_record(row)

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

    # -- tasks -------------------------------------------------------------------------------------

    def tasks(self) -> list[TaskRecord]:
        """All registered tasks, in ``seq`` (append) order."""
        with self._reading() as session:
            return [_to_record(row) for row in session.scalars(select(TaskRow).order_by(TaskRow.seq))]

    def get_task(self, name: str) -> TaskRecord:
        """The task called ``name``. Raises :class:`~snowhub.errors.TaskNotFoundError` naming the known ones."""
        with self._reading() as session:
            row = session.scalars(select(TaskRow).where(TaskRow.name == name)).one_or_none()
            if row is not None:
                return _to_record(row)
            names = list(session.scalars(select(TaskRow.name).order_by(TaskRow.seq)))
        if not names:
            raise TaskNotFoundError(
                f"no task named {name!r}: the hub at {self._layout.root} has no tasks yet; "
                "add one with `snowhub add-task`"
            )
        raise TaskNotFoundError(f"no task named {name!r}; known tasks: {_names(names)}")

    def has_task(self, name: str) -> bool:
        """Whether a task called ``name`` is registered."""
        with self._reading() as session:
            return session.scalar(select(TaskRow.seq).where(TaskRow.name == name)) is not None

    def next_seq(self) -> int:
        """The ``seq`` the next added task will get: 1 + the largest so far, or 1 for an empty hub."""
        with self._reading() as session:
            return (session.scalar(select(func.max(TaskRow.seq))) or 0) + 1

    def add_task(self, record: TaskRecord) -> None:
        """Append a task in one transaction. ``record.seq`` may be None (it is then assigned).

        Raises :class:`~snowhub.errors.TaskExistsError` if the name is taken (the hub is unchanged),
        :class:`~snowhub.errors.HubNotFoundError` if the hub has no source yet,
        :class:`~snowhub.errors.SnowhubError` if ``record.seq`` is set but is not the next one (another
        process appended meanwhile), and ``ValueError`` if a required field of `record` is None.
        """
        try:
            with self._writing() as session:
                if session.get(SourceRow, 1) is None:
                    raise self._no_source()
                taken = session.scalar(select(TaskRow.seq).where(TaskRow.name == record.name))
                if taken is not None:
                    raise self._task_exists(record.name, taken)
                expected = (session.scalar(select(func.max(TaskRow.seq))) or 0) + 1
                if record.seq is None:
                    record.seq = expected
                elif record.seq != expected:
                    raise SnowhubError(
                        f"task {record.name!r} was prepared as number {record.seq} but the next is {expected} "
                        "(another process added a task meanwhile); add it again"
                    )
                self._seal(session, record)
            crash_point("registry:after-commit")
        except sa_exc.IntegrityError as error:
            # Backstop for the check above; never let a SQL trace reach the user.
            if "task.name" in str(error.orig):
                raise self._task_exists(record.name, None) from None
            raise

    def _task_exists(self, name: str, seq: int | None) -> TaskExistsError:
        where = f" (task {seq})" if seq is not None else ""
        return TaskExistsError(
            f"a task named {name!r} already exists in {self._layout.root}{where}; "
            "tasks are append-only, choose another name"
        )
