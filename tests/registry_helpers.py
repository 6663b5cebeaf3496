"""A real PostgreSQL server for the registry tests, and registries on both databases.

``postgres_admin_url`` (session): ``$SNOWHUB_TEST_POSTGRES_URL`` (scripts/test.sh starts one), else a throwaway
server started here with ``scripts/postgres.sh`` and stopped at the end of the session. Only when no server can
be started are the PostgreSQL tests skipped, with the reason (under CI a skip fails the run: tests/conftest.py).
``fresh_database`` makes an empty database per test; ``registry_url`` is parametrised over both databases
(None = the default ``sqlite:///<hub>/hub.db``). Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import itertools
import os
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
    for table in ("alembic_version", "hub", "source", "task"):
        try:
            rows += [(table, *map(str, r)) for r in pg(url, f'SELECT * FROM "{table}" ORDER BY 1')]
        except Exception:  # noqa: BLE001 -- a table that does not exist (yet) is part of the state too
            rows.append((table, "absent"))
    return rows
