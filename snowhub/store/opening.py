"""Creating and opening a registry, in its hub directory (``hub.db``) or behind a URL.

A registry outside the hub directory records which directory holds its files (the ``hub`` table, written by
``init`` and ``registry copy``). Opening it checks that the directory it is given holds them, and, when no
directory is given, uses the recorded one. Nothing is written when opening fails: a database that is empty,
foreign, of a newer schema or unreachable is refused with one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, insert, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from snowhub.errors import (
    HubExistsError,
    HubFilesError,
    HubNotFoundError,
    HubVersionError,
    NotARegistryError,
    SnowhubError,
)
from snowhub.names import default_hub_path
from snowhub.store.database import current_revision, dialect_for, head_revision, migrate, upgrade, write_engine
from snowhub.store.files import HubLayout, write_error
from snowhub.store.models import HubRow, utcnow
from snowhub.store.url import ENV, in_directory, parse, redacted, resolve

if TYPE_CHECKING:
    from snowhub.store.interface import RegistryStore as Registry

_TABLES = {"alembic_version", "source", "task"}
_INIT = "create one with `snowhub init --source NAME --registry URL`"


def _writable(cls: type[Registry], layout: HubLayout, in_dir: bool) -> bool:
    return cls.writable(layout) if in_dir else os.access(layout.root, os.W_OK)


def _initialise(engine: Engine, layout: HubLayout, where: str) -> None:
    """Check the database is empty, create the schema and record the hub directory: one transaction."""
    module = dialect_for(engine.url)
    with write_engine(engine).begin() as conn:
        tables = set(module.schema_tables(conn))
        if tables & _TABLES:
            raise HubExistsError(f"{where} already holds a snowhub registry; open it as `registry`, "
                                 "or give init an empty database")
        if tables:
            raise NotARegistryError(f"{where} is not empty (it holds {', '.join(sorted(tables)[:5])}); give "
                                    "snowhub an empty database of its own")
        migrate(conn)
        conn.execute(insert(HubRow).values(id=1, directory=str(layout.root), created_at=utcnow()))


def create(cls: type[Registry], root: Path, url: str | URL | None = None, adopt: bool = False) -> Registry:
    """Create a new, empty registry for the hub directory ``root`` (made if missing, with its subdirectories).

    Without `url` (and ``$SNOWHUB_REGISTRY_URL``) the registry is ``root/hub.db``. With one, the database must
    be empty; ``root`` must not hold another hub's files, unless `adopt` (``registry copy``: the files of the
    hub being copied). Raises :class:`~snowhub.errors.HubExistsError` if a hub or registry is already there,
    :class:`~snowhub.errors.NotARegistryError` for a database that is not empty, and one-line errors for a
    server that cannot be reached or refuses the login. On failure nothing is left in the database.
    """
    layout = HubLayout(root)
    resolved = resolve(layout, url)
    if layout.root.exists() and not layout.root.is_dir():
        raise SnowhubError(f"{layout.root} is a file, not a directory; choose a directory for the hub")
    exists = HubExistsError(f"a snowhub hub already exists at {layout.root}; use it, or choose another directory")
    inside = in_directory(resolved, layout)
    module = dialect_for(resolved)
    if not inside and not adopt and (layout.db_path.exists() or any(
            d.is_dir() and any(d.iterdir()) for d in (layout.source_dir, layout.tasks_dir))):
        raise exists
    if inside and layout.db_path.exists():
        raise exists
    file = Path(str(resolved.database)).expanduser().absolute() if module.NAME == "sqlite" else None
    where = str(file) if file is not None else redacted(resolved)
    directories = (layout.root, layout.source_dir, layout.tasks_dir, layout.staging_dir)
    made = [d for d in directories if not d.exists()]
    try:
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
        if file is not None:
            # O_EXCL decides the race between two concurrent `init`s; SQLite treats an empty file as an
            # empty database.
            os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise (exists if inside else HubExistsError(f"{where} already exists; give init a new registry file")) from None
    except OSError as error:
        raise write_error(Path(error.filename or layout.root), error) from None
    engine = module.make_engine(resolved)
    try:
        _initialise(engine, layout, where)
    except BaseException as error:
        engine.dispose()
        for directory in reversed(made):  # nothing written: not even the hub's directories
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        if file is not None:  # leave no half-made registry file behind, so that `init` can simply be run again
            for suffix in ("", "-wal", "-shm"):
                Path(f"{file}{suffix}").unlink(missing_ok=True)
        if isinstance(error, sa_exc.DatabaseError):
            raise module.database_error(where, error, url=resolved) from None
        raise
    return cls(layout, engine, url=resolved)


def discard(registry: Registry) -> None:
    """Undo :func:`create` outside the hub directory (a failed ``init`` or ``registry copy``): drop its tables."""
    if registry.in_directory:
        return  # recovery.remove_new_hub deletes hub.db itself
    try:
        with registry.connection() as conn, conn.begin():
            for table in ("task_event", "trusted_key", "task", "source", "hub", "alembic_version"):
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
    finally:
        registry.close()
    if registry.dialect_name == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{registry.location}{suffix}").unlink(missing_ok=True)


def open_registry(cls: type[Registry], root: Path | None, url: str | URL | None, migrate: bool = True,
                  read_only: bool = False) -> Registry:
    """Open the registry of the hub at ``root``, first migrating it if an older snowhub wrote it.

    ``root`` None: ``$SNOWHUB_HOME`` or ``./.snowhub``, or, for a registry behind a URL, the directory it
    recorded. `migrate` False refuses a registry that needs an upgrade instead of upgrading it. `read_only`
    True opens it without writing even where it could (``snowhub serve``); it still sees other processes'
    commits.

    Raises :class:`~snowhub.errors.HubNotFoundError` if there is no hub (or registry) there,
    :class:`~snowhub.errors.HubVersionError` if a newer snowhub wrote it,
    :class:`~snowhub.errors.NotARegistryError` for a database that is not a registry,
    :class:`~snowhub.errors.HubFilesError` if ``root`` does not hold the registry's files, and a one-line
    :class:`~snowhub.errors.SnowhubError` if the database cannot be read or reached.
    """
    given = url if url is not None else (os.environ.get(ENV) or None)
    layout = HubLayout(root if root is not None else default_hub_path())
    if given is None or in_directory(parse(given), layout):
        return _open_in_directory(cls, layout, migrate, read_only)
    return _open_outside(cls, root, parse(given), migrate, read_only)


def _refuse_old(engine: Engine, where: str) -> None:
    from snowhub.store.database import _script

    revision = current_revision(engine)
    if revision is not None and revision not in {rev.revision for rev in _script().walk_revisions()}:
        raise HubVersionError(f"this hub was written by a newer snowhub (schema {revision}); upgrade snowhub")
    if revision != head_revision():
        raise HubVersionError(f"{where} is at schema {revision}, not {head_revision()}; run `snowhub list` once "
                              "to upgrade it, then retry")


def _open_in_directory(cls: type[Registry], layout: HubLayout, migrate: bool, read_only: bool = False) -> Registry:
    from snowhub.store import sqlite

    if layout.root.exists() and not layout.root.is_dir():
        raise HubNotFoundError(f"{layout.root} is a file, not a snowhub hub directory; pass the hub's directory")
    if not layout.db_path.is_file():
        raise HubNotFoundError(f"no snowhub hub at {layout.root}; create one with `snowhub init --source NAME`")
    # A hub on read-only storage (or without write permission) can still be listed and served.
    read_only = read_only or not _writable(cls, layout, True)
    engine = sqlite.open_engine(layout.db_path, read_only=read_only)
    try:
        if migrate:
            upgrade(engine, read_only=read_only)
        else:
            _refuse_old(engine, str(layout.db_path))
    except sa_exc.DatabaseError as error:
        engine.dispose()
        raise sqlite.database_error(layout.db_path, error) from None
    except BaseException:
        engine.dispose()
        raise
    return cls(layout, engine, read_only)


def _open_outside(cls: type[Registry], root: Path | None, url: URL, migrate: bool, read_only: bool = False) -> Registry:
    module = dialect_for(url)
    file = Path(str(url.database)).expanduser().absolute() if module.NAME == "sqlite" else None
    where = str(file) if file is not None else redacted(url)
    if file is not None and not file.is_file():
        raise HubNotFoundError(f"no snowhub registry at {file}; {_INIT}")
    engine = module.make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(module.schema_tables(conn))
        if not tables:
            raise HubNotFoundError(f"no snowhub registry in {where} (the database is empty); {_INIT}")
        if not _TABLES <= tables:
            raise NotARegistryError(f"{where} is not a snowhub registry (it holds {', '.join(sorted(tables)[:5])}); "
                                    "check the registry URL")
        if migrate:
            upgrade(engine)
        else:
            _refuse_old(engine, where)
        registry = cls(HubLayout(root or Path(".")), engine, url=url)
        recorded = registry.hub_directory()
        if root is None and recorded is None:
            raise HubFilesError(f"{where} records no hub directory; give the directory of its files as `path`")
        layout = HubLayout(root if root is not None else Path(str(recorded)))
        registry = cls(layout, engine, read_only or not _writable(cls, layout, False), url)
        _check_files_here(registry, recorded)
        return registry
    except sa_exc.DatabaseError as error:
        engine.dispose()
        raise module.database_error(where, error, url=url) from None
    except BaseException:
        engine.dispose()
        raise


def _check_files_here(registry: Registry, recorded: str | None) -> None:
    root = registry.layout.root
    elsewhere = f"; it keeps them in {recorded}" if recorded and recorded != str(root) else ""
    if not root.is_dir():
        raise HubFilesError(f"the hub directory {root} of {registry.location} does not exist here{elsewhere}: give "
                            "the directory that holds its files as `path` (as mounted on this machine)")
    try:
        source = registry.source()
    except HubNotFoundError:
        return  # init never finished: the caller says so
    if not registry.layout.resolve(source.weights_file).is_file():
        raise HubFilesError(f"{root} does not hold the files of the registry {registry.location} (no "
                            f"{source.weights_file} there){elsewhere}: give the directory that "
                            "holds them as `path` (as mounted on this machine)")
