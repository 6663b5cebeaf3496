"""Whether a registry's live schema is the one this snowhub's ORM describes (PostgreSQL's integrity check)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection


def schema_differences(conn: Connection) -> list[str]:
    """How the live schema differs from the one this snowhub's ORM describes (empty when it is the same)."""
    from snowhub.store.models import Base

    context = MigrationContext.configure(conn, opts={"compare_type": False})
    return [f"the schema differs from snowhub's: {' '.join(str(d).split())[:160]}"
            for d in compare_metadata(context, Base.metadata)]
