"""Sessions and schema migrations of the hub registry, on any database snowhub supports.

What differs between databases (connections, how a writer's transaction begins, the integrity check, the
writer lock, error messages) lives in one module per dialect: :mod:`snowhub.store.sqlite` and
:mod:`snowhub.store.postgresql`. Alembic migrations run on either, in one transaction: a migration either
applies completely or not at all (DDL is transactional on both).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from snowhub.errors import HubVersionError, SnowhubError


def dialect_of(engine: Engine | Connection) -> ModuleType:
    """:mod:`snowhub.store.sqlite` or :mod:`snowhub.store.postgresql`, for `engine`'s database."""
    return dialect_for(engine.engine.url if isinstance(engine, Connection) else engine.url)


def dialect_for(url: URL) -> ModuleType:
    """:mod:`snowhub.store.sqlite` or :mod:`snowhub.store.postgresql`, for the database of `url`."""
    if url.get_backend_name() == "postgresql":
        from snowhub.store import postgresql

        return postgresql
    from snowhub.store import sqlite

    return sqlite


def write_engine(engine: Engine) -> Engine:
    """A view of ``engine`` for writers (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction advisory lock)."""
    return dialect_of(engine).write_engine(engine)


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


def migrate(conn: Connection) -> None:
    """Run every migration not yet applied, inside the caller's open transaction on `conn`."""
    config = _alembic_config()
    _check_known(_heads(conn), ScriptDirectory.from_config(config))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def upgrade(engine: Engine, read_only: bool = False) -> None:
    """Migrate the database to this snowhub's newest schema (a no-op when it is already there).

    Safe to call from several processes at once: the upgrade runs in one writer transaction (SQLite:
    ``BEGIN IMMEDIATE``; PostgreSQL: under a transaction advisory lock), so the others wait and then find
    nothing to do. Raises
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
