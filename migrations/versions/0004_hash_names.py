"""One name, one meaning for hashes: ``<file>_sha256`` is a file's sha256, ``tensors_sha256`` a tensor digest.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 01:00:00.000000

Before, ``weights_sha256`` was the tensor digest on the source but the delta file's sha256 on a task.
Renames source.weights_sha256 → tensors_sha256, task.weights_sha256 → weights_file_sha256 and
task.probe_sha256 → probe_file_sha256 (values untouched). Column names are part of a row's seal, so rows
are re-sealed, but only those whose seal held: a row edited behind snowhub's back stays detectably edited.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from snowhub_migrations._record_v1 import KEYS, record_digest

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

RENAMES = {"source": {"weights_sha256": "tensors_sha256"},
           "task": {"weights_sha256": "weights_file_sha256", "probe_sha256": "probe_file_sha256"}}


def _rename(renames: dict[str, dict[str, str]]) -> None:
    conn = op.get_bind()
    for table, columns in renames.items():
        key = KEYS[table]
        rows = [dict(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"')).mappings()]
        for old, new in columns.items():  # standard SQL: SQLite >= 3.25 and PostgreSQL keep the data in place
            op.execute(f'ALTER TABLE "{table}" RENAME COLUMN "{old}" TO "{new}"')
        for row in rows:
            if row["record_sha256"] != record_digest(table, row):
                continue  # already broken: keep it so
            renamed = {columns.get(name, name): value for name, value in row.items()}
            conn.execute(sa.text(f'UPDATE "{table}" SET record_sha256 = :d WHERE "{key}" = :k'),
                         {"d": record_digest(table, renamed), "k": row[key]})


def upgrade() -> None:
    """Upgrade schema."""
    _rename(RENAMES)


def downgrade() -> None:
    """Downgrade schema."""
    _rename({table: {new: old for old, new in columns.items()} for table, columns in RENAMES.items()})
