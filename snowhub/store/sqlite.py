"""What is SQLite-specific about a registry: connections, ``BEGIN IMMEDIATE``, integrity check, errors, lock.

Every connection runs in WAL mode (readers never block the writer) with a 30 s busy timeout (a writer
waits for another instead of failing). SQLAlchemy, not the sqlite3 module, emits ``BEGIN`` so that DDL is
transactional too: a migration either applies completely or not at all. Writers use ``BEGIN IMMEDIATE``
(see :func:`write_engine`), so they take SQLite's write lock up front and cannot deadlock half-way
through a read-then-write transaction. The writer lock of a hub with an SQLite registry is the ``flock`` on
``hub.lock`` (:mod:`snowhub.store.lock`): one machine's processes share one SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

from snowhub.errors import HubLockedError, HubReadOnlyError, HubWriteError, SnowhubError
from snowhub.store.lock import file_lock, file_lock_holder

if TYPE_CHECKING:
    from snowhub.progress import Progress
    from snowhub.store.interface import RegistryStore

NAME = "sqlite"
BUSY_TIMEOUT_S = 30.0
_BEGIN_OPTION = "snowhub_sqlite_begin"


def database_path(url: URL) -> Path:
    """The file of an ``sqlite:///PATH`` URL, absolute. Raises SnowhubError for an in-memory database."""
    if not url.database or url.database == ":memory:":
        raise SnowhubError(f"{url} names no database file; use sqlite:////absolute/path/hub.db")
    return Path(url.database).expanduser().absolute()


def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (it would not BEGIN before DDL); the
    # "begin" listener below emits BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock that another process may hold briefly.
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss too. Writes are rare (one per task), so this costs nothing.
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _on_connect_read_only(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # A read-only hub: no journal-mode switch and no synchronous setting (both would need a write).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def open_engine(db_path: Path, read_only: bool = False) -> Engine:
    """An engine on the SQLite file ``db_path`` (WAL mode, 30 s busy timeout on every connection).

    The file must already exist (``Registry.create`` makes it; SQLite would otherwise silently create an
    empty one): connecting to a missing file raises ``sqlalchemy.exc.OperationalError``.

    ``read_only=True`` is for a hub on read-only storage: SQLite opens the file read-only, and, when no
    ``-wal`` file holds unfolded commits, as *immutable* (WAL mode needs a writable ``-shm`` file
    otherwise). A read-only engine on a writable directory is never immutable: it keeps seeing the commits
    of writers in other processes (``snowhub serve`` while ``add-task`` runs).
    """
    db_path = Path(db_path).absolute()
    mode = "ro" if read_only else "rw"
    uri = f"{db_path.as_uri()}?mode={mode}"
    if read_only and not Path(f"{db_path}-wal").exists() and not os.access(db_path.parent, os.W_OK):
        uri += "&immutable=1"

    def connect() -> sqlite3.Connection:
        # The busy timeout is set by _on_connect; a pool may be shared by threads, hence check_same_thread.
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    # The URL is only used by SQLAlchemy to pick the dialect and a file-database pool; `creator` connects.
    engine = create_engine(f"sqlite:///{db_path}", creator=connect)
    event.listen(engine, "connect", _on_connect_read_only if read_only else _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


def make_engine(url: URL, read_only: bool = False) -> Engine:
    """:func:`open_engine` on the file of `url`."""
    return open_engine(database_path(url), read_only)


def write_engine(engine: Engine) -> Engine:
    """A view of ``engine`` whose transactions start with ``BEGIN IMMEDIATE`` (for writers)."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def read_engine(engine: Engine) -> Engine:
    """Readers: SQLite's deferred transaction is already one consistent snapshot (WAL)."""
    return engine


def integrity_check(conn: Connection) -> list[str]:
    """SQLite's ``PRAGMA integrity_check``: an empty list when the database file is sound, else its lines, each
    prefixed ``SQLite integrity check: ``."""
    lines = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check")]
    return [] if lines == ["ok"] else [f"SQLite integrity check: {line}" for line in lines]


def database_error(where: str | Path, error: BaseException, url: URL | None = None) -> SnowhubError:
    """A one-line, actionable error for an SQLite failure (never a trace with SQL in it)."""
    text = " ".join(str(getattr(error, "orig", None) or error).split())
    low = text.lower()
    if "locked" in low or "busy" in low:
        return HubLockedError(f"{where} stayed locked by another process for over {BUSY_TIMEOUT_S:.0f} s "
                              f"({text}); retry when it is done")
    if "readonly" in low or "read-only" in low:
        return HubReadOnlyError(f"cannot write {where} ({text}); the hub is read-only, make it writable")
    if "full" in low or "i/o error" in low:
        return HubWriteError(f"cannot read or write {where} ({text}); free some disk space, check the disk, "
                             "then retry")
    if "unable to open" in low:
        return SnowhubError(f"cannot open {where} ({text}); check that the hub's files are readable and writable")
    return SnowhubError(f"{where} is not a readable snowhub registry ({text}); restore it from a backup")


def is_unique_violation(error: BaseException, column: str) -> bool:
    """Whether an IntegrityError is the UNIQUE constraint on `column` (``"task.name"``)."""
    return f"UNIQUE constraint failed: {column}" in str(getattr(error, "orig", error))


def writer_lock(registry: RegistryStore, wait: bool, timeout: float | None,
                progress: Progress | None) -> AbstractContextManager[None]:
    """The hub's ``flock`` on ``hub.lock`` (one machine, as the SQLite file itself)."""
    return file_lock(registry.layout, wait, timeout, progress)


def lock_holder(registry: RegistryStore) -> str | None:
    """Who holds the writer lock (``"pid N"``) or None; never waits."""
    return file_lock_holder(registry.layout)


def schema_tables(conn: Connection) -> Iterator[str]:
    """The tables in the database (to tell an empty or foreign database from a registry)."""
    return (name for (name,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'"))
