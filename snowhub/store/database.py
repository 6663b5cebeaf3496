"""SQLite engine, sessions and schema migrations of the hub registry.

Every connection runs in WAL mode (readers never block the writer) with a 30 s busy timeout (a writer
waits for another instead of failing). SQLAlchemy, not the sqlite3 module, emits ``BEGIN`` so that DDL is
transactional too: a migration either applies completely or not at all. Writers use ``BEGIN IMMEDIATE``
(see :func:`write_engine`), so they take SQLite's write lock up front and cannot deadlock half-way
through a read-then-write transaction.
"""

from __future__ import annotations

import os
import sqlite3
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from snowhub.errors import HubVersionError, SnowhubError

BUSY_TIMEOUT_S = 30.0
_BEGIN_OPTION = "snowhub_sqlite_begin"


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
    of writers in other processes.
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


def write_engine(engine: Engine) -> Engine:
    """A view of ``engine`` whose transactions start with ``BEGIN IMMEDIATE`` (for writers)."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine`` whose objects stay usable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _alembic_config() -> Config:
    traversable = files("snowhub_migrations")
    location = Path(str(traversable))
    # Alembic needs a real directory; an installed wheel or a checkout provides one (a zipapp would not).
    if not (location / "env.py").is_file():
        raise SnowhubError(
            f"snowhub's migrations are not a directory on disk ({traversable}); reinstall snowhub from a wheel"
        )
    config = Config()
    config.set_main_option("script_location", str(location))
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _heads(conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(conn).get_current_heads())


def _check_known(heads: tuple[str, ...], script: ScriptDirectory) -> None:
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [head for head in heads if head not in known]
    if unknown:
        raise HubVersionError(
            f"this hub was written by a newer snowhub (schema {', '.join(unknown)}); upgrade snowhub"
        )


def head_revision() -> str:
    """The newest schema revision this snowhub knows."""
    head = _script().get_current_head()
    assert head is not None, "snowhub ships at least one migration"
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database, or ``None`` if it was never migrated."""
    with engine.connect() as conn:
        heads = _heads(conn)
    return heads[0] if heads else None


def upgrade(engine: Engine, read_only: bool = False) -> None:
    """Migrate the database to this snowhub's newest schema (a no-op when it is already there).

    Safe to call from several processes at once: the upgrade runs in one ``BEGIN IMMEDIATE``
    transaction, so the others wait and then find nothing to do. Raises
    :class:`~snowhub.errors.HubVersionError` if the database carries a revision this snowhub does not
    know (it was written by a newer snowhub), or if it needs an upgrade but ``read_only`` is set.
    """
    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    # Cheap read first, so opening an up-to-date hub never takes SQLite's write lock.
    with engine.connect() as conn:
        heads = _heads(conn)
    _check_known(heads, script)
    if heads == (script.get_current_head(),):
        return
    if read_only:
        raise HubVersionError(
            f"this hub was written by an older snowhub (schema {', '.join(heads) or 'none'}) and must be upgraded "
            "once, but it is read-only; make it writable and run `snowhub list` to upgrade it"
        )
    with write_engine(engine).begin() as conn:
        # Another process may have migrated between our read and our write lock: look again.
        _check_known(_heads(conn), script)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
