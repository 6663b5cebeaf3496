"""Seals that mean the same on every database (``snowhub.record.v2``), task.lineage, and the hub table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:00:00.000000

* Rows were sealed over the values as SQLite stores them (JSON text, SQLite's datetime string). v2 hashes
  the typed values (JSON canonicalised, timestamps as UTC ISO), so the same record has the same seal on
  SQLite and PostgreSQL. Rows are re-sealed, but only those whose v1 seal held: a row edited behind
  snowhub's back before the upgrade stays detectably edited (a v1 digest never matches a v2 one).
* ``task.lineage`` (JSON, NULL for a task trained in this hub): where an imported task came from.
* ``hub`` (at most one row): the hub directory a registry outside it (``--registry URL``) keeps its files in.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from snowhub_migrations import _record_v1 as v1
from snowhub_migrations import _record_v2 as v2

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _rows(conn, table):
    return [dict(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"')).mappings()]


def upgrade() -> None:
    """Upgrade schema."""
    conn = op.get_bind()
    before = {table: _rows(conn, table) for table in v2.KEYS}
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("lineage", sa.JSON(), nullable=True))
    op.create_table(
        "hub",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("directory", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_hub_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub")),
    )
    for table, rows in before.items():
        key = v2.KEYS[table]
        for row in rows:
            if row["record_sha256"] != v1.record_digest(table, row):
                continue  # already broken: keep it so
            typed = row | ({"lineage": None} if table == "task" else {})
            conn.execute(sa.text(f'UPDATE "{table}" SET record_sha256 = :d WHERE "{key}" = :k'),
                         {"d": v2.record_digest(table, typed), "k": row[key]})


def downgrade() -> None:
    """Downgrade schema (v2 seals stay: 0004's code would report every row as edited)."""
    op.drop_table("hub")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("lineage")
