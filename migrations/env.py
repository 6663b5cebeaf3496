"""Alembic environment for the hub registry.

snowhub runs Alembic programmatically only (see :func:`snowhub.store.database.upgrade`): the caller opens
the connection (and its transaction) and passes it in ``config.attributes["connection"]``; there is no
alembic.ini and no URL here.
"""

from alembic import context

from snowhub.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "snowhub migrations run programmatically only: put a Connection in config.attributes['connection']"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=True,
        # The caller's connection BEGINs explicitly, so DDL really is transactional on SQLite here.
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("snowhub migrations do not support offline (--sql) mode")
run_migrations_online()
