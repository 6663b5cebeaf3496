"""Where a hub's registry lives: a SQLAlchemy database URL, ``sqlite:///<hub>/hub.db`` unless told otherwise.

``--registry URL`` (or ``$SNOWHUB_REGISTRY_URL``) puts it elsewhere, e.g. on a PostgreSQL server that several
machines share (``postgresql+psycopg://user:password@host:5432/db``; a plain ``postgresql://`` means the
same, psycopg 3 being snowhub's driver). The hub directory still holds the weight files.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from snowhub.errors import RegistryURLError
from snowhub.store.files import HubLayout

ENV = "SNOWHUB_REGISTRY_URL"


def default_url(layout: HubLayout) -> URL:
    """``sqlite:///<hub>/hub.db``: the registry inside the hub directory (every hub before ``--registry``)."""
    return URL.create("sqlite", database=str(layout.db_path))


def parse(url: str | URL) -> URL:
    """`url` as a SQLAlchemy URL with snowhub's driver. Raises :class:`RegistryURLError` for anything unusable."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise RegistryURLError(
            f"{_shown(str(url))} is not a database URL; use sqlite:////path/hub.db or "
            "postgresql+psycopg://user:password@host:5432/database"
        ) from None
    # the driver from the name itself: get_driver_name() imports the dialect, and an unknown one ("garbage://")
    # raised SQLAlchemy's NoSuchModuleError with a traceback
    backend, driver = parsed.get_backend_name(), parsed.drivername.partition("+")[2]
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy's default would be psycopg2, which snowhub does not use
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif driver != "psycopg":
            raise RegistryURLError(f"{redacted(parsed)}: snowhub talks to PostgreSQL with psycopg 3; "
                                   "write postgresql+psycopg://…")
        if not parsed.database:
            raise RegistryURLError(f"{redacted(parsed)} names no database; add /DATABASE to the URL")
    elif backend == "sqlite":
        if driver not in ("pysqlite", ""):
            raise RegistryURLError(f"{redacted(parsed)}: use a plain sqlite:///PATH URL")
        if not parsed.database or parsed.database == ":memory:":
            raise RegistryURLError(f"{redacted(parsed)} names no database file; use sqlite:////absolute/path/hub.db")
    else:
        raise RegistryURLError(f"{redacted(parsed)}: snowhub keeps registries in SQLite or PostgreSQL, "
                               f"not {backend}")
    return parsed


def resolve(layout: HubLayout, url: str | URL | None) -> URL:
    """The registry URL of the hub at `layout`: `url`, else ``$SNOWHUB_REGISTRY_URL``, else :func:`default_url`."""
    given = url if url is not None else (os.environ.get(ENV) or None)
    return default_url(layout) if given is None else parse(given)


def in_directory(url: URL, layout: HubLayout) -> bool:
    """Whether `url` is the hub's own ``hub.db`` (the registry is then found by the directory alone)."""
    return url.get_backend_name() == "sqlite" and Path(str(url.database)).expanduser().absolute() == layout.db_path


def redacted(url: URL) -> str:
    """The URL for messages: the password hidden."""
    return url.render_as_string(hide_password=True)


def _shown(text: str) -> str:
    # A string that is not even a URL may still hold a password after "//user:"; show its scheme only.
    return text.split("://", 1)[0] + "://…" if "://" in text else repr(text)
