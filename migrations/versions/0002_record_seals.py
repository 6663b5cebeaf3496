"""Seal every registry row: a record_sha256 column on source and task, filled for existing rows.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# The seal format is frozen in its own module, shared with later migrations that re-seal.
from snowhub_migrations._record_v1 import KEYS as _KEYS, record_digest as _record_digest

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    for table in ("source", "task"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("record_sha256", sa.String(), nullable=True))
    conn = op.get_bind()
    for table, key in _KEYS.items():
        # Rows written before this revision had no seal: seal them as they are now.
        rows = [dict(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"')).mappings()]
        for row in rows:
            conn.execute(sa.text(f'UPDATE "{table}" SET record_sha256 = :d WHERE "{key}" = :k'),
                         {"d": _record_digest(table, row), "k": row[key]})


def downgrade() -> None:
    """Downgrade schema."""
    for table in ("task", "source"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("record_sha256")
