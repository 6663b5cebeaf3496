"""A task's life: versions (task.version, unique with the name) and the sealed, append-only task_event table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 21:30:00.000000

* ``task.version`` (NOT NULL, every existing task is version 1); the name alone is no longer unique, the
  name and the version are (``uq_task_name_version``).
* ``task_event``: one sealed row per change of state (alias set, retired, tagged, …), never updated; ids run
  1, 2, … and each row records the seal of the one before (``previous_sha256``).

The new column is part of every task row's seal from now on, so rows are re-sealed with ``version`` = 1, but
only those whose seal held: a row edited behind snowhub's back before the upgrade stays detectably edited.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from snowhub_migrations import _record_v2 as v2

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    conn = op.get_bind()
    rows = [dict(r) for r in conn.execute(sa.text('SELECT * FROM "task"')).mappings()]
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.drop_constraint("uq_task_name", type_="unique")
        batch.create_unique_constraint("uq_task_name_version", ["name", "version"])
        batch.create_check_constraint("version_positive", "version >= 1")
    op.create_table(
        "task_event",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("previous_sha256", sa.String(), nullable=True),
        sa.Column("record_sha256", sa.String(), nullable=True),
        sa.CheckConstraint("id >= 1", name=op.f("ck_task_event_id_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_event")),
    )
    for row in rows:
        if row["record_sha256"] != v2.record_digest("task", row):
            continue  # already broken: keep it so
        conn.execute(sa.text('UPDATE "task" SET record_sha256 = :d WHERE seq = :k'),
                     {"d": v2.record_digest("task", row | {"version": 1}), "k": row["seq"]})


def downgrade() -> None:
    """Downgrade schema (refused once a name has a second version: 0006 allows one task per name)."""
    op.drop_table("task_event")
    with op.batch_alter_table("task") as batch:
        batch.drop_constraint(op.f("ck_task_version_positive"), type_="check")
        batch.drop_constraint("uq_task_name_version", type_="unique")
        batch.create_unique_constraint("uq_task_name", ["name"])
        batch.drop_column("version")
