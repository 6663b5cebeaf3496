"""A real PostgreSQL server for the registry tests, and registries on both databases.

``postgres_admin_url`` (session): ``$SNOWHUB_TEST_POSTGRES_URL`` (scripts/test.sh starts one), else a throwaway
server started here with ``scripts/postgres.sh`` and stopped at the end of the session. Only when no server can
be started are the PostgreSQL tests skipped, with the reason (under CI a skip fails the run: tests/conftest.py).
``fresh_database`` makes an empty database per test; ``registry_url`` is parametrised over both databases
(None = the default ``sqlite:///<hub>/hub.db``); ``registry_hub`` is a private copy of the session's trained hub
with its registry on either database. tests/conftest.py imports the fixtures, so every test module can use them.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = "SNOWHUB_TEST_POSTGRES_URL"
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_admin_url():
    """The URL of a database on a live PostgreSQL server whose user may create databases."""
    given = os.environ.get(ENV)
    if given:
        yield given
        return
    directory = Path(tempfile.mkdtemp(prefix="snowhub-pg-"))  # postgres.sh gives it to the cluster owner
    started = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "start", str(directory)],
                             capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop", str(directory)], timeout=120)
        tail = " ".join(started.stderr.split()[-30:])
        pytest.skip(f"needs a PostgreSQL server, and scripts/postgres.sh could not start one: {tail}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop", str(directory)], timeout=120)


def admin(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE) on the server of `url`."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def database_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def fresh_database(postgres_admin_url):
    """The URL of a new, empty database on the test server (dropped afterwards, its connections ended)."""
    name = f"snowhub_t{os.getpid()}_{next(_names)}"
    admin(postgres_admin_url, f'CREATE DATABASE "{name}"')
    yield database_url(postgres_admin_url, name)
    admin(postgres_admin_url,
          f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()",
          f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request):
    """None (the hub's own hub.db) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("fresh_database")


def pg(url: str, statement: str, **params: object) -> list[tuple]:
    """Run one statement on the registry database behind snowhub's back (tampering), return its rows."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def dump(url: str) -> list[tuple]:
    """Every row of the registry's tables, for 'nothing changed' comparisons."""
    rows = []
    for table in ("alembic_version", "hub", "source", "task", "task_event"):
        try:
            rows += [(table, *map(str, r)) for r in pg(url, f'SELECT * FROM "{table}" ORDER BY 1')]
        except Exception:  # noqa: BLE001 -- a table that does not exist (yet) is part of the state too
            rows.append((table, "absent"))
    return rows


@dataclasses.dataclass
class RegistryHub:
    """A hub directory and the URL of its registry (None: the hub's own ``hub.db``)."""

    path: Path
    url: str | None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    @property
    def where(self) -> str:
        """How snowhub's messages name the registry: the hub.db file, or the URL with its password hidden."""
        if self.url is None:
            return str(self.path / "hub.db")
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def cli_args(self) -> list[str]:
        """The options that point a command at this hub and registry."""
        return ["--hub", str(self.path)] + ([] if self.url is None else ["--registry", self.url])

    def open(self, **options):
        """``Hub.open`` on this hub and registry (the caller closes it)."""
        from snowhub import Hub

        return Hub.open(self.path, registry=self.url, **options)

    def snapshot(self) -> dict[str, str]:
        """Everything the hub holds: every file's sha256 and the registry's rows, on whichever database."""
        from fixtures.hubkit import snapshot

        state = snapshot(self.path)  # hub.db's rows too: on PostgreSQL it must stay as the copy left it
        if self.url is not None:
            state["registry (rows)"] = repr(dump(self.url))
        return state

    def execute(self, statement: str) -> None:
        """Run one statement on the registry behind snowhub's back (tampering), written in SQLite's SQL: on
        PostgreSQL, ``replace(column, ...)`` of a json column is done on its text."""
        if self.url is None:
            from fixtures.hubkit import sql

            sql(self.path, statement)
        else:
            as_text = r"CAST(replace(CAST(\1 AS text), \2) AS json)"
            pg(self.url, re.sub(r"replace\((\w+), ([^)]*)\)", as_text, statement))


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_hub(request, hub_copy) -> RegistryHub:
    """A private copy of the session hub (`hub_copy`) with its registry on SQLite (the hub's hub.db) or copied
    into a fresh PostgreSQL database with ``Hub.copy_registry`` (as ``snowhub registry copy`` does)."""
    if request.param == "sqlite":
        return RegistryHub(hub_copy, None)
    from snowhub import Hub

    url = request.getfixturevalue("fresh_database")
    Hub.copy_registry(hub_copy, url)
    return RegistryHub(hub_copy, url)
