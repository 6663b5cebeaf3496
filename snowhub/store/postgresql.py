"""What is PostgreSQL-specific about a registry: connections, isolation, the advisory writer lock, errors.

* Readers run in ``REPEATABLE READ`` read-only transactions: every read of one call sees one snapshot, as a
  WAL reader does on SQLite, so a reader never sees half of a task.
* Writers run in ``READ COMMITTED`` and first take a *transaction* advisory lock (released at commit or
  rollback): PostgreSQL's ``BEGIN IMMEDIATE``. Checks made inside the transaction (the name is free, the
  next ``seq``) still hold when it commits.
* The hub's writer lock (held for a whole add-task, training included) is a *session* advisory lock on the
  server (``pg_advisory_lock``), so it serialises writers on every machine that uses the registry. It lives
  on one dedicated connection: the server drops it when that connection ends, a killed writer included
  (TCP keepalives notice a machine that vanished within about a minute).
* Every session runs in UTC (``TimeZone=UTC``), so timestamps read back the same everywhere.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from snowhub.errors import HubLockedError, HubReadOnlyError, HubWriteError, RegistryUnreachableError, SnowhubError
from snowhub.store.schema import schema_differences
from snowhub.store.url import redacted

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from snowhub.progress import Progress
    from snowhub.store.files import HubLayout


class _Connected(Protocol):
    """What the writer lock needs of :class:`snowhub.store.Registry` beyond the :class:`RegistryStore`
    interface: a connection of its own (the session advisory lock lives as long as it does)."""

    layout: HubLayout
    read_only: bool

    def connection(self, autocommit: bool = False) -> AbstractContextManager[Connection]: ...

NAME = "postgresql"
CONNECT_TIMEOUT_S = 5
_POLL_S = 0.1
# Advisory lock keys (two int4): "snow", then 1 = the hub's writer lock, 2 = one write transaction.
_SPACE = 0x736E6F77
_WRITER, _TRANSACTION = 1, 2
_WRITER_OPTION = "snowhub_pg_writer"


def _application_name() -> str:
    return f"snowhub pid {os.getpid()} on {socket.gethostname()}"[:63]


def _on_connect_params(_dialect: Any, _record: Any, _cargs: Any, cparams: dict) -> None:
    cparams["application_name"] = _application_name()  # per connection: a forked child names itself


def _on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_WRITER_OPTION):
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SPACE}, {_TRANSACTION})")


def make_engine(url: URL, read_only: bool = False) -> Engine:
    """An engine on the PostgreSQL database of `url` (psycopg 3; UTC sessions, keepalives, 5 s connect timeout)."""
    try:
        engine = create_engine(url, isolation_level="READ COMMITTED", connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S, "options": "-c TimeZone=UTC",
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
        })
    except (ImportError, NoSuchModuleError):
        raise SnowhubError(f"{redacted(url)} needs the psycopg 3 driver; install it with "
                           "pip install 'snowhub[postgres]'") from None
    event.listen(engine, "do_connect", _on_connect_params)
    event.listen(engine, "begin", _on_begin)
    return engine


def write_engine(engine: Engine) -> Engine:
    """Writers: READ COMMITTED, serialised by a transaction advisory lock taken at BEGIN."""
    return engine.execution_options(**{_WRITER_OPTION: True})


def read_engine(engine: Engine) -> Engine:
    """Readers: one REPEATABLE READ, read-only snapshot per transaction."""
    return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


def integrity_check(conn: Connection) -> list[str]:
    """PostgreSQL checks its own pages; snowhub checks that the schema is still the one it made (each difference
    prefixed ``PostgreSQL integrity check: ``)."""
    return [f"PostgreSQL integrity check: {line}" for line in schema_differences(conn)]


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def database_error(where: str, error: BaseException, url: URL | None = None) -> SnowhubError:
    """A one-line, actionable error for a PostgreSQL failure (never a trace with SQL in it)."""
    orig = getattr(error, "orig", None) or error
    state = getattr(orig, "sqlstate", None) or ""
    text_ = _first_line(error)
    low = text_.lower()
    server = f"{url.host or 'localhost'}:{url.port or 5432}" if url is not None else where
    user = url.username if url is not None and url.username else "the user"
    if state == "28P01" or "password authentication failed" in low:
        return RegistryUnreachableError(f"the PostgreSQL server {server} refused {user}'s login (password "
                                        "authentication failed); check the user and password in the registry URL")
    if state.startswith("28") or "no pg_hba.conf entry" in low or ("role" in low and "does not exist" in low):
        return RegistryUnreachableError(f"the PostgreSQL server {server} refused the login ({text_}); check the "
                                        "user in the registry URL and the server's pg_hba.conf")
    if state == "3D000" or ("database" in low and "does not exist" in low):
        database = url.database if url is not None else "the database"
        return RegistryUnreachableError(f"database {database!r} does not exist on the PostgreSQL server {server}; "
                                        f"create it (createdb {database}) or fix the registry URL")
    if state.startswith("08") or any(s in low for s in ("connection refused", "could not connect", "timeout expired",
                                                          "connection failed", "could not translate host",
                                                          "server closed the connection", "no route to host")):
        return RegistryUnreachableError(f"cannot reach the PostgreSQL server {server} of the registry ({text_}); "
                                        "check the host and port in the URL and that the server is running")
    if state in ("55P03", "40P01", "40001"):
        return HubLockedError(f"{where} is busy with another writer ({text_}); retry when it is done")
    if state in ("25006", "42501"):
        return HubReadOnlyError(f"cannot write {where} ({text_}); give the registry's user write access")
    if state.startswith("53"):
        return HubWriteError(f"the PostgreSQL server {server} cannot write ({text_}); free space on the server "
                             "and retry")
    return SnowhubError(f"{where} is not a readable snowhub registry ({text_}); check it with `snowhub doctor`")


def is_unique_violation(error: BaseException, column: str) -> bool:
    """Whether an IntegrityError is the UNIQUE constraint on `column` (``"task.name"``)."""
    orig = getattr(error, "orig", error)
    return getattr(orig, "sqlstate", None) == "23505" and f"uq_{column.replace('.', '_')}" in str(orig)


def _try(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": _SPACE, "b": _WRITER}).scalar())


def _holder(conn: Connection) -> str | None:
    row = conn.execute(text(
        "SELECT a.application_name, a.pid FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) AND l.classid = :a AND l.objid = :b AND l.objsubid = 2"),
        {"a": _SPACE, "b": _WRITER}).first()
    if row is None:
        return None
    name, pid = row
    return name[len("snowhub "):] if name and name.startswith("snowhub pid ") else f"server pid {pid}"


def lock_holder(registry: _Connected) -> str | None:
    """Who holds the writer lock (``"pid N on HOST"``), or None. Never waits."""
    with registry.connection() as conn:
        return _holder(conn)


@contextmanager
def writer_lock(registry: _Connected, wait: bool, timeout: float | None,
                progress: Progress | None) -> Iterator[None]:
    """Hold the registry's session advisory lock (see the module docstring); the arguments are those of
    :func:`snowhub.store.lock.file_lock`. Raises HubLockedError when another holds it and we stop waiting."""
    root = registry.layout.root
    if registry.read_only:
        raise HubReadOnlyError(f"the hub at {root} is read-only; make it writable to change it")
    with registry.connection(autocommit=True) as conn:
        acquired = _try(conn)
        waited = False
        if not acquired and wait:
            if progress is not None:
                waited = True
                progress.start("waiting for the writer lock", None)
                progress.finish(f"waiting: another snowhub process ({_holder(conn) or 'pid unknown'}) is writing to "
                                f"{root}; continuing when it is done (Ctrl-C to give up)")
                progress.start("waiting for the writer lock", None)
            deadline = None if timeout is None else time.monotonic() + timeout
            while not (acquired := _try(conn)):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(_POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic())))
        if waited:
            progress.finish()
        if not acquired:
            raise HubLockedError(f"another snowhub process is writing to {root} "
                                 f"({_holder(conn) or 'pid unknown'}); wait for it or retry")
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": _SPACE, "b": _WRITER})
            except Exception:  # noqa: BLE001 -- a dead connection: the server has released the lock already
                pass


def schema_tables(conn: Connection) -> Iterator[str]:
    """The tables in the registry's schema (to tell an empty or foreign database from a registry)."""
    return (name for (name,) in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")))
